"""The driver actor: runs the round loop inside the cluster, next to the run directory it writes.

It is pinned to the node of the process that started the run (that is where runs/ lives) and answers progress
queries while the loop runs (a threaded actor with two slots: one for `run`, one for `progress`). It is handed
the experiment as the launcher prepared it (prepared once, checked before anything was written) and the host
actors the launcher started beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from msfusion_ray.experiment import Prepared
from msfusion_ray.failures import open_run_log
from msfusion_ray.runtime.hosts import HostPool
from msfusion_ray.runtime.runner import Runner

FETCH_TIMEOUT_S = 300.0


class Driver:
    def __init__(self, prepared_box: list, data_box: list, hosts: HostPool, run_dir: str, run_id: str,
                 resume: bool):
        logging.getLogger("msfusion_ray").addHandler(open_run_log(Path(run_dir)))  # its warnings: replaced hosts
        data_ref = data_box[0]
        prepared = ray.get(prepared_box[0], timeout=FETCH_TIMEOUT_S)
        prepared = dataclasses.replace(prepared, data=ray.get(data_ref, timeout=FETCH_TIMEOUT_S))
        self.runner = Runner(prepared, data_ref, Path(run_dir), run_id, resume, hosts=hosts)

    def run(self) -> dict[str, Any]:
        return self.runner.run()

    def progress(self) -> dict[str, Any]:
        return dict(self.runner.progress)

    def pid(self) -> int:
        """Its process (on the launcher's node): a launcher that kills the driver waits for it to be gone."""
        return os.getpid()


DriverActor = ray.remote(num_cpus=0, max_concurrency=2)(Driver)


def start_driver(prepared: Prepared, data_ref: ray.ObjectRef, hosts: HostPool, run_dir: Path, run_id: str,
                 resume: bool):  # noqa: ANN201
    """The driver actor, on this node, given the experiment without its data (the data travel once, by
    reference, shared with the hosts)."""
    here = ray.get_runtime_context().get_node_id()
    prepared_ref = ray.put(dataclasses.replace(prepared, data=None))
    return DriverActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(
        [prepared_ref], [data_ref], hosts, str(run_dir), run_id, resume)
