"""The host and driver actors as a launcher starts them: each builds its real object (`runtime.host.Host`,
`runtime.driver.Driver`) in its own process and hands it every call, so that starting them imports nothing of
torch in the launcher's process (the command line holds no torch: msfusion_ray.launchable)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _built(target: str, args: tuple) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(*args)


class Host:
    """A host actor: msfusion_ray.runtime.host.Host in its own process (see there what each call does; the same
    name, so that Ray's actor table and process titles say `Host`)."""

    def __init__(self, *args: Any):
        self.host = _built("msfusion_ray.runtime.host:Host", args)

    def ping(self) -> int:
        return self.host.ping()

    def node(self) -> str:
        return self.host.node()

    def describe(self) -> dict[str, Any]:
        return self.host.describe()

    def run(self, tasks: list, payloads: list, lrs: list[float]) -> list:
        return self.host.run(tasks, payloads, lrs)

    def evaluate(self, *args: Any) -> tuple[list[dict[str, float]], float]:
        return self.host.evaluate(*args)

    def export_state(self, tasks: dict[int, int]) -> dict[int, Any]:
        return self.host.export_state(tasks)

    def import_state(self, states: dict[int, Any]) -> None:
        self.host.import_state(states)

    def restore_state(self, states: dict[int, Any]) -> None:
        self.host.restore_state(states)


class Driver:
    """The driver actor: msfusion_ray.runtime.driver.Driver in its own process (the same name, for Ray's actor
    table and process titles), a threaded actor with two slots, one for `run`, one for `progress`."""

    def __init__(self, *args: Any):
        self.driver = _built("msfusion_ray.runtime.driver:Driver", args)

    def run(self) -> dict[str, Any]:
        return self.driver.run()

    def progress(self) -> dict[str, Any]:
        return self.driver.progress()

    def pid(self) -> int:
        """Its process (on the launcher's node): a launcher that kills the driver waits for it to be gone."""
        return os.getpid()


HostActor = ray.remote(max_restarts=0)(Host)
DriverActor = ray.remote(num_cpus=0, max_concurrency=2)(Driver)


def start_driver(rest: Any, data_ref: ray.ObjectRef, hosts: Any, run_dir: Path, run_id: str,
                 resume: bool):  # noqa: ANN201
    """The driver actor, on this node (where the run directory is), given the experiment without its data
    (`Launchable.rest`), the data by reference (it travels once, shared with the hosts), and the `HostPool` the
    launcher started beside it."""
    here = ray.get_runtime_context().get_node_id()
    return DriverActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(
        [ray.put(rest)], [data_ref], hosts, str(run_dir), run_id, resume)
