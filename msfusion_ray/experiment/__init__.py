"""The experiment: a checked config resolved into everything a run needs (data, fleet, model, strategy, capacity),
and that experiment as a launcher ships it to the driver and host actors.

config_check.py   the whole config checked, the strategy's parameters by its class (the schema built from the
                  strategy registry)
prepare.py        config -> `Experiment`: every name resolved, the data loaded and partitioned, the global model
                  fixed against the fleet's capacity; impossible set-ups refused
checks.py         the checks `prepare` makes that are not a field's own: the machine, the tracker, the user's model
shipment.py       what a launcher holds of an experiment, its torch-laden parts packed where it was prepared apart
pipeline_planning.py, mpsl_planning.py   pipeline split learning planned from a config, without training
"""
