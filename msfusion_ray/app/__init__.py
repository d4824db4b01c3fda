"""The lifecycle of runs: load -> check -> prepare -> launch -> watch -> finish, for one run (lifecycle.py), a
sweep of runs on one cluster (sweep.py) and the fair tuning protocol (tuning.py). The command line and the Python
API (msfusion_ray.cli, msfusion_ray.api) parse, call these and print; nothing else orchestrates a run.

request.py      load and check: what the user asked to run, its config checked (no torch needed)
preparation.py  the whole check and the prepare step (imports torch); apart.py runs it in a child process
lifecycle.py    one run from request to summary; `open_run_dir`, `launch`, the cluster started beside preparing
run_dir.py      the run directory and summary.json, one owner and one writer; provenance.py what produced a run
run_handle.py   a launched run: its driver and hosts, polled, restarted if the driver dies, how it ended
ray_session.py  the cluster a lifecycle runs on, and Ray's own lines sent to the run's log
progress.py, stops.py, tracking.py   what the user sees, how runs stop, optional MLflow / TensorBoard tracking
sweep_plan.py, sweep_status.py, sweep.py, tuning.py, schema.py   sweeps, tuning and the files' JSON Schema
calibrate.py    `calibrate`: a node measured (msfusion_ray.devices.calibration) and written as a device profile

Several stages on one cluster (tuning's two sweeps, or a comparison that tunes, then runs the winners on fresh seeds):
open a `launching.Launcher` and start its cluster; every run and sweep started inside it uses that cluster (a
lifecycle joins the Ray session open in its process), each stage resumable as a sweep is.
"""
