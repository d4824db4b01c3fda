"""The pool of host actors a run uses, which participant lives where, and replacing a host whose process died.

A host that dies (killed, crashed, its node lost, or stopped by Ray's memory monitor) is replaced by a new actor
for the same participants, their memory restored from the run's last checkpoint (`saved_states`, set by the
Runner; a fresh start before the first checkpoint). The run goes on; `runtime.max_host_restarts` replacements in
all, then the run ends with `HostsKeepDying`.
"""

from __future__ import annotations

import logging
from typing import Callable

import ray
from ray.actor import ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.devices.gpu_share import gpu_share, resolve_device
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.runtime.actor_classes import ByReference, HostActor
from msfusion_ray.runtime.failure_texts import describe_failure
from msfusion_ray.runtime.settings import ParticipantSpecs, WorkerSettings

STARTUP_TIMEOUT_S = 300.0
log = logging.getLogger(__name__)


class HostsKeepDying(RuntimeError):
    """More host processes died than runtime.max_host_restarts allows."""


def host_count(runtime: RuntimeConfig, participants: int, cpus: float) -> int:
    """Host actors a run starts: runtime.hosts, else as many as the run's CPUs (its `host_cpus` share of the
    cluster, or all of the cluster's `cpus`) hold at `threads_per_host` threads each, so that a run that sets
    nothing keeps every core busy without more torch processes than cores; never more than participants or
    runtime.max_hosts."""
    if runtime.hosts is not None:
        return min(runtime.hosts, participants)
    budget = runtime.host_cpus if runtime.host_cpus is not None else cpus
    fitting = max(1, int(budget / runtime.threads_per_host + 1e-9))
    return min(fitting, participants, runtime.max_hosts or participants)


class HostPool:
    """The run's host actors. Creating the pool starts them and returns at once (they import torch and load
    their data while the driver starts); `wait_ready` waits until every one answers."""

    def __init__(self, shipment: Shipment, data_ref: ray.ObjectRef, run_id: str):
        runtime = shipment.config.runtime
        fleet = shipment.fleet
        ids = [p.id for p in fleet.participants]
        groups = {p.id: p.device.name for p in fleet.participants} if runtime.device_resources else None
        cpus = ray.cluster_resources().get("CPU", 1.0)
        assignments = assign_hosts(ids, host_count(runtime, len(ids), cpus), groups)
        # Hosts share the run's CPU budget logically (several runs of a sweep share the cluster); each caps its real
        # threads with torch.set_num_threads.
        budget = runtime.host_cpus if runtime.host_cpus is not None else 0.9 * cpus
        num_cpus = round(min(float(runtime.threads_per_host), budget / len(assignments)), 4)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        self.device = resolve_device(runtime.device, gpus)
        self.gpu_share = gpu_share(gpus, len(assignments), runtime.gpus_per_host) if self.device == "cuda" else 0.0
        settings = WorkerSettings(run_id=run_id, host=0, seed=shipment.config.seed,
                                  training=shipment.config.training, clock=runtime.clock,
                                  task_timeout_s=runtime.task_timeout_s, device=self.device,
                                  device_required=runtime.device == "cuda", gpu_share=self.gpu_share)
        self.host_of: dict[int, int] = {}
        self.actors = []
        self._starts: list[Callable[[], object]] = []  # per host: how to start (or start again) its actor
        for host_id, members in enumerate(assignments):
            specs = ParticipantSpecs(members, fleet, shipment.partitions)
            options: dict = {"num_cpus": num_cpus}
            if self.gpu_share:
                options["num_gpus"] = self.gpu_share
            if groups is not None:
                options["resources"] = {f"device:{groups[members[0]]}": 0.001}
            host_settings = WorkerSettings(**{**settings.__dict__, "host": host_id})
            args = (host_id, shipment.family, ByReference(data_ref), specs, host_settings, runtime.threads_per_host,
                    runtime.task_timeout_s)
            self._starts.append(lambda options=options, args=args: HostActor.options(**options).remote(*args))
            self.actors.append(self._starts[host_id]())
            self.host_of.update({pid: host_id for pid in members})
        self.restarts = 0
        self.generations = [0] * len(self.actors)  # per host: how many times it was replaced
        self.max_restarts = runtime.max_host_restarts
        self.timeout_s = runtime.task_timeout_s
        self.saved_states: Callable[[], dict[int, dict]] = dict  # participant -> its state in the last checkpoint
        self._cpus = cpus
        self._ready = False
        self.descriptions: list[dict] = []  # what each host trains on, for the per-host records (GPU runs; ready)

    def wait_ready(self) -> None:
        if self._ready:
            return
        pings = [actor.ping.remote() for actor in self.actors]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=STARTUP_TIMEOUT_S)
        if len(ready) < len(pings):
            gpus = f", {self.gpu_share:g} GPU each" if self.gpu_share else ""
            raise RuntimeError(f"only {len(ready)} of {len(pings)} host actors started within {STARTUP_TIMEOUT_S:.0f} s "
                               f"(cluster CPUs: {self._cpus:g}{gpus}); lower runtime.hosts or runtime.threads_per_host")
        ray.get(ready, timeout=STARTUP_TIMEOUT_S)  # surfaces a host that failed in its constructor
        if self.gpu_share:
            self.descriptions = ray.get([a.describe.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)
        self._ready = True

    def actor_for(self, participant: int) -> ActorHandle:
        return self.actors[self.host_of[participant]]

    def members(self, host: int) -> list[int]:
        return [pid for pid, h in self.host_of.items() if h == host]

    def replace(self, host: int, cause: str, tasks: dict[int, int], detail: str = "") -> None:
        """Start a new actor for `host`, whose process died (`cause`, one line; `detail`, Ray's full text, goes to
        the run's log), with its participants' memory as the last checkpoint saved it, known as of their task in
        `tasks` (participant -> the task its next work starts from). Ends the run once more hosts died than
        runtime.max_host_restarts allows."""
        if self.restarts >= self.max_restarts:
            raise HostsKeepDying(f"{cause}; {self.restarts + 1} host deaths in this run, more than "
                                 f"runtime.max_host_restarts={self.max_restarts}")
        self.restarts += 1
        ray.kill(self.actors[host], no_restart=True)
        actor = self._starts[host]()
        saved = self.saved_states()
        states = {pid: {"task": tasks.get(pid, -1), "state": saved.get(pid, {}).get("state", {})}
                  for pid in self.members(host)}
        ray.get(actor.restore_state.remote(states), timeout=STARTUP_TIMEOUT_S)
        self.actors[host] = actor
        self.generations[host] += 1
        log.warning("host %d replaced (restart %d of at most %d), its participants %s restored from %s: %s%s", host,
                    self.restarts, self.max_restarts, self.members(host),
                    "the last checkpoint" if saved else "their initial state", cause, f"\n{detail}" if detail else "")

    def export_states(self, tasks: dict[int, int], timeout_s: float) -> dict[int, dict]:
        """Every participant's memory as of its task in `tasks` (participant -> its last aggregated task)."""
        return self.gather_states(self.request_states(tasks), tasks, timeout_s)

    def request_states(self, tasks: dict[int, int]) -> list[tuple[int, ray.ObjectRef]]:
        """Ask for the states without waiting: each host answers in turn, after the work already sent to it and
        before any sent later (a checkpoint taken at a step boundary while the next step is under way). Each
        answer comes with the generation of the actor asked."""
        return [(self.generations[host], a.export_state.remote(tasks)) for host, a in enumerate(self.actors)]

    def gather_states(self, asked: list[tuple[int, ray.ObjectRef]], tasks: dict[int, int],
                      timeout_s: float) -> dict[int, dict]:
        """The answers to `request_states(tasks)`. A host found dead is replaced first, unless it was replaced
        since it was asked (one death, one replacement); its participants then have the memory they were restored
        to."""
        states: dict[int, dict] = {}
        for host, (generation, ref) in enumerate(asked):
            try:
                states.update(ray.get(ref, timeout=timeout_s))
            except (RayActorError, OutOfMemoryError) as err:
                if generation == self.generations[host]:
                    self.replace(host, describe_failure(err, f"host {host}"), tasks, str(err))
                states.update(ray.get(self.actors[host].export_state.remote(tasks), timeout=timeout_s))
        return states

    def import_states(self, states: dict[int, dict], timeout_s: float) -> None:
        by_host: dict[int, dict[int, dict]] = {}
        for pid, state in states.items():
            by_host.setdefault(self.host_of[pid], {})[pid] = state
        ray.get([self.actors[h].import_state.remote(s) for h, s in by_host.items()], timeout=timeout_s)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def assign_hosts(participant_ids: list[int], n_hosts: int, groups: dict[int, str] | None = None) -> list[list[int]]:
    """Sticky assignment of participants to hosts: round-robin, or within device classes when `groups` is given
    (so that a host serves one class and can be placed on that class's nodes)."""
    if groups is None:
        return [participant_ids[h::n_hosts] for h in range(n_hosts)]
    by_class: dict[str, list[int]] = {}
    for pid in participant_ids:
        by_class.setdefault(groups[pid], []).append(pid)
    hosts: list[list[int]] = []
    share = max(1, n_hosts // len(by_class))
    for members in by_class.values():
        count = min(share, len(members))
        hosts.extend(members[h::count] for h in range(count))
    return hosts
