"""The driver actor: runs the round loop inside the cluster, next to the run directory it writes.

It is pinned to the node of the process that started the run (that is where runs/ lives) and answers progress
queries while the loop runs (a threaded actor with two slots: one for `run`, one for `progress`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.experiment import prepare
from msfusion_ray.failures import open_run_log
from msfusion_ray.runtime.runner import Runner


class Driver:
    def __init__(self, config: ExperimentConfig, data_box: list, run_dir: str, run_id: str, resume: bool):
        logging.getLogger("msfusion_ray").addHandler(open_run_log(Path(run_dir)))  # its warnings: replaced hosts
        data_ref = data_box[0]
        prepared = prepare(config, data=ray.get(data_ref, timeout=config.runtime.task_timeout_s))
        self.runner = Runner(prepared, data_ref, Path(run_dir), run_id, resume)

    def run(self) -> dict[str, Any]:
        return self.runner.run()

    def progress(self) -> dict[str, Any]:
        return dict(self.runner.progress)


DriverActor = ray.remote(num_cpus=0, max_concurrency=2)(Driver)


def start_driver(config: ExperimentConfig, data_ref: ray.ObjectRef, run_dir: Path, run_id: str, resume: bool):  # noqa: ANN201
    here = ray.get_runtime_context().get_node_id()
    return DriverActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(
        config, [data_ref], str(run_dir), run_id, resume)
