"""The driver actor's work (started as `runtime.actor_classes.DriverActor`): runs the round loop inside the
cluster, next to the run directory it writes.

It is pinned to the node of the process that started the run (that is where runs/ lives) and answers progress
queries while the loop runs (a threaded actor with two slots: one for `run`, one for `progress`). It is handed
the experiment as the launcher prepared it (prepared once, checked before anything was written) and the host
actors the launcher started beside it. It writes the run's records and checkpoints; summary.json is its
launcher's to write, from what `progress` and `run` return.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from msfusion_ray.runtime.actor_classes import ByReference
from msfusion_ray.runtime.host_pool import HostPool
from msfusion_ray.runtime.run_log import run_log_handler
from msfusion_ray.runtime.runner import Runner

class Driver:
    def __init__(self, experiment: ByReference, data: ByReference, hosts: HostPool, run_dir: str, run_id: str,
                 resume: bool):
        logging.getLogger("msfusion_ray").addHandler(run_log_handler(Path(run_dir)))  # its warnings: replaced hosts
        whole = dataclasses.replace(experiment.fetch(), data=data.fetch())
        self.runner = Runner(whole, data.ref, Path(run_dir), run_id, resume, hosts=hosts)

    def run(self) -> dict[str, Any]:
        return self.runner.run()

    def progress(self, known_round: int = -1) -> dict[str, Any]:
        """How far the run is; with the run's summary so far (`Runner.summary`) once it is past `known_round`."""
        progress = dict(self.runner.progress)
        if progress["round"] != known_round:
            progress["summary"] = self.runner.summary("running")
        return progress
