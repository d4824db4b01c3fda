"""The host and driver actor classes as a launcher starts them: each builds its real object (`runtime.host.Host`,
`runtime.driver.Driver`) in its own process and hands it every call, so that starting them imports nothing of
torch in the launcher's process (the command line holds no torch: msfusion_ray.experiment.shipment)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import ray

from msfusion_ray.experiment.shipment import opened

FETCH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ByReference:
    """An object in the store, passed to an actor as its reference: Ray resolves a reference given as an argument
    itself, but not one held inside another object, so the actor fetches it when (and as often as) it needs."""

    ref: ray.ObjectRef

    def fetch(self, timeout_s: float = FETCH_TIMEOUT_S) -> Any:
        """The object, opened where it travelled `Packed`."""
        return opened(ray.get(self.ref, timeout=timeout_s))


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

    def progress(self, known_round: int = -1) -> dict[str, Any]:
        return self.driver.progress(known_round)

    def pid(self) -> int:
        """Its process (on the launcher's node): a launcher that kills the driver waits for it to be gone."""
        return os.getpid()


HostActor = ray.remote(max_restarts=0)(Host)
DriverActor = ray.remote(num_cpus=0, max_concurrency=2)(Driver)
