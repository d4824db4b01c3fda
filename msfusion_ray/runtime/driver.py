"""The driver actor's work (started as `runtime.actors.DriverActor`): runs the round loop inside the cluster, next
to the run directory it writes.

It is pinned to the node of the process that started the run (that is where runs/ lives) and answers progress
queries while the loop runs (a threaded actor with two slots: one for `run`, one for `progress`). It is handed
the experiment as the launcher prepared it (prepared once, checked before anything was written) and the host
actors the launcher started beside it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import ray

from msfusion_ray.failures import open_run_log
from msfusion_ray.launchable import opened
from msfusion_ray.runtime.hosts import HostPool
from msfusion_ray.runtime.runner import Runner

FETCH_TIMEOUT_S = 300.0


class Driver:
    def __init__(self, prepared_box: list, data_box: list, hosts: HostPool, run_dir: str, run_id: str,
                 resume: bool):
        logging.getLogger("msfusion_ray").addHandler(open_run_log(Path(run_dir)))  # its warnings: replaced hosts
        data_ref = data_box[0]
        prepared = opened(ray.get(prepared_box[0], timeout=FETCH_TIMEOUT_S))
        prepared = dataclasses.replace(prepared, data=opened(ray.get(data_ref, timeout=FETCH_TIMEOUT_S)))
        self.runner = Runner(prepared, data_ref, Path(run_dir), run_id, resume, hosts=hosts)

    def run(self) -> dict[str, Any]:
        return self.runner.run()

    def progress(self) -> dict[str, Any]:
        return dict(self.runner.progress)
