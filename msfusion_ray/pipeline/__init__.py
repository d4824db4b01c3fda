"""Pipeline split learning without Ray: the time of one epoch (EdgeSys'25's closed form and a discrete-event
schedule on virtual time), and the plan of a run (cut, placement, stage times, memory per node)."""
