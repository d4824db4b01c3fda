"""The pool of host actors a run uses, which participant lives where, and replacing a host whose process died.

A host that dies (killed, crashed, its node lost, or stopped by Ray's memory monitor) is replaced by a new actor
for the same participants, their memory restored from the run's last checkpoint (`saved_states`, set by the
Runner; a fresh start before the first checkpoint), on whichever node offers what it asks for (its device class,
with `runtime.device_resources`). The run goes on; `runtime.max_host_restarts` replacements in all, then the run
ends with `HostsKeepDying`. Where no node of the cluster offers what a host asks for, the pool waits
`runtime.node_wait_s` for one to join, then the run ends with `NoNodeFor`, naming the class.

Participants are numbered 0 .. N-1 and the pool keeps which host holds each as one array (`host_of`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable

import numpy as np
import ray
from ray.actor import ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.devices.enforcement import RunGroups
from msfusion_ray.devices.gpu_share import gpu_share, resolve_device
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.runtime.actor_classes import ByReference, HostActor
from msfusion_ray.runtime.failure_texts import describe_failure
from msfusion_ray.runtime.settings import ParticipantSpecs, WorkerSettings

STARTUP_TIMEOUT_S = 300.0
RESTART_ATTEMPTS = 3
log = logging.getLogger(__name__)


class HostsKeepDying(RuntimeError):
    """More host processes died than runtime.max_host_restarts allows."""


class NoNodeFor(RuntimeError):
    """No node of the cluster offers what a host asks for (its device class), and none joined in time."""


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
        classes = fleet.profile_of if runtime.device_resources else None
        cpus = ray.cluster_resources().get("CPU", 1.0)
        # Hosts share the run's CPU budget logically (several runs of a sweep share the cluster); each caps its real
        # threads with torch.set_num_threads.
        budget = runtime.host_cpus if runtime.host_cpus is not None else 0.9 * cpus
        self.enforced = None
        self.evaluation_beside = True  # whether a step's evaluation may run beside the next step
        if runtime.enforce == "cgroups":
            self.enforced = RunGroups.create(runtime, own_devices(fleet), run_id, budget)
            assignments, note = enforced_hosts(fleet, self.enforced.plan, host_count(runtime, len(fleet), cpus),
                                               budget, classes)
            self.evaluation_beside, beside = evaluation_beside_training(len(assignments), runtime.threads_per_host,
                                                                        budget)
            self.enforced.note = f"{note}; {beside}"
            log.info("enforced devices: %s", self.enforced.note)
        else:
            assignments = assign_hosts(len(fleet), host_count(runtime, len(fleet), cpus), classes)
        num_cpus = round(min(float(runtime.threads_per_host), budget / len(assignments)), 4)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        self.device = resolve_device(runtime.device, gpus) if self.enforced is None else "cpu"
        self.gpu_share = gpu_share(gpus, len(assignments), runtime.gpus_per_host) if self.device == "cuda" else 0.0
        settings = WorkerSettings(run_id=run_id, host=0, seed=shipment.config.seed,
                                  training=shipment.config.training, clock=runtime.clock,
                                  task_timeout_s=runtime.task_timeout_s, device=self.device,
                                  device_required=runtime.device == "cuda", gpu_share=self.gpu_share,
                                  time_model=runtime.time_model,
                                  enforcement=self.enforced.plan if self.enforced is not None else None)
        self.host_of = np.empty(len(fleet), dtype=np.int32)  # participant -> host
        self.actors = []
        self.asks: list[dict] = []  # per host: the resources it asks for
        # per host: how to start (or start again) its actor, given how many actors held its participants before
        self._starts: list[Callable[[int], object]] = []
        for host_id, members in enumerate(assignments):
            specs = ParticipantSpecs(members, fleet, shipment.partitions)
            options: dict = {"num_cpus": num_cpus}
            if self.gpu_share:
                options["num_gpus"] = self.gpu_share
            if classes is not None:
                options["resources"] = {device_resource(fleet.profiles[classes[members[0]]].name): 0.001}
            args = (host_id, shipment.family, ByReference(data_ref), specs)
            self._starts.append(lambda generation, options=options, args=args, host_id=host_id:
                                HostActor.options(**options).remote(
                                    *args, replace(settings, host=host_id, generation=generation),
                                    runtime.threads_per_host, runtime.task_timeout_s))
            self.asks.append(options)
            self.actors.append(self._starts[host_id](0))
            self.host_of[members] = host_id
        self.nodes: list[str] = ["?"] * len(self.actors)  # per host: the address of its node, once it answered
        self.restarts = 0
        self.generations = [0] * len(self.actors)  # per host: how many times it was replaced
        self.max_restarts = runtime.max_host_restarts
        self.timeout_s = runtime.task_timeout_s
        self.node_wait_s = runtime.node_wait_s
        # participant -> its state in the last checkpoint (those whose memory holds anything); None: no checkpoint
        self.saved_states: Callable[[], dict[int, dict] | None] = lambda: None
        self._cpus = cpus
        self._ready = False
        self.descriptions: list[dict] = []  # what each host trains on, for the per-host records (GPU runs; ready)

    def wait_ready(self) -> None:
        if self._ready:
            return
        pings = [actor.node.remote() for actor in self.actors]
        self.nodes = self._wait_started(pings, list(range(len(self.actors))))
        if self.gpu_share:
            self.descriptions = ray.get([a.describe.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)
        self._ready = True

    def _wait_started(self, answers: list[ray.ObjectRef], hosts: list[int]) -> list:
        """The answers of hosts just started, once all are in. A host no node of the cluster can take (none
        offers its device class) is waited for `runtime.node_wait_s`, then the run ends with `NoNodeFor`; one
        that a node can take gets STARTUP_TIMEOUT_S to start."""
        started = time.monotonic()
        while True:
            ready, _ = ray.wait(answers, num_returns=len(answers), timeout=1.0)
            if len(ready) == len(answers):
                return ray.get(answers, timeout=STARTUP_TIMEOUT_S)  # surfaces a host that failed in its constructor
            waited = time.monotonic() - started
            pending = [host for host, answer in zip(hosts, answers) if answer not in ready]
            if waited > self.node_wait_s:
                for host in pending:
                    missing = unoffered(self.asks[host])
                    if missing:
                        raise NoNodeFor(f"no node of the cluster offers {missing} (host {host}'s participants); "
                                        f"waited runtime.node_wait_s={self.node_wait_s:g} s for one to join")
            if waited > max(self.node_wait_s, STARTUP_TIMEOUT_S):
                gpus = f", {self.gpu_share:g} GPU each" if self.gpu_share else ""
                raise RuntimeError(f"only {len(ready)} of {len(answers)} host actors started within {waited:.0f} s "
                                   f"(cluster CPUs: {self._cpus:g}{gpus}); lower runtime.hosts or "
                                   f"runtime.threads_per_host")

    def actor_for(self, participant: int) -> ActorHandle:
        return self.actors[self.host_of[participant]]

    def members(self, host: int) -> np.ndarray:
        return np.flatnonzero(self.host_of == host)

    def describe(self, err: BaseException, host: int) -> str:
        """A failure of a host in one line, naming its node."""
        return describe_failure(err, f"host {host}", where=f"node {self.nodes[host]}")

    def replace(self, host: int, cause: str, detail: str = "") -> None:
        """Start a new actor for `host`, whose process died (`cause`, one line; `detail`, Ray's full text, goes to
        the run's log), with its participants' memory as the last checkpoint saved it (the others start empty).
        Ends the run once more hosts died than runtime.max_host_restarts allows, or where no node can take the
        new actor (`_wait_started`); hosts the kernel killed at an enforced device's memory limit do not count
        (the device ran out of memory: its task's outcome)."""
        at_limit = self.memory_killed(host)  # a device that ran out of memory: an outcome, not a failure
        if self.restarts >= self.max_restarts and not at_limit:
            raise HostsKeepDying(f"{cause}; {self.restarts + 1} host deaths in this run, more than "
                                 f"runtime.max_host_restarts={self.max_restarts}")
        self.restarts += 0 if at_limit else 1
        ray.kill(self.actors[host], no_restart=True)
        saved = self.saved_states()
        states = {pid: entry for pid, entry in (saved or {}).items() if self.host_of[pid] == host}
        self.actors[host] = self._restart(host, states)
        self.generations[host] += 1
        restored = "the last checkpoint" if saved is not None else "their initial state"
        log.warning("host %d replaced (restart %d of at most %d) on node %s, its participants restored from %s: %s%s",
                    host, self.restarts, self.max_restarts, self.nodes[host], restored, cause,
                    f"\n{detail}" if detail else "")

    def _restart(self, host: int, states: dict[int, dict]):  # noqa: ANN202 (a Ray actor handle)
        """A new actor for `host`, started with its participants' `states`. One that dies while it starts (placed
        on a node that was being lost: the cluster notices a lost node only after a few seconds) is started
        again, up to RESTART_ATTEMPTS times."""
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            actor = self._starts[host](self.generations[host] + 1)
            try:
                self.nodes[host], _ = self._wait_started([actor.node.remote(), actor.restore_state.remote(states)],
                                                         [host, host])
                return actor
            except RayActorError as err:
                ray.kill(actor, no_restart=True)
                if err.actor_init_failed or attempt == RESTART_ATTEMPTS:
                    raise
                log.warning("host %d's new actor died while starting (%s); starting another", host,
                            describe_failure(err, f"host {host}"))
            except BaseException:
                ray.kill(actor, no_restart=True)
                raise
        raise AssertionError("unreachable")

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
                    self.replace(host, self.describe(err, host), str(err))
                states.update(ray.get(self.actors[host].export_state.remote(tasks), timeout=timeout_s))
        return states

    def import_states(self, states: dict[int, dict], timeout_s: float) -> None:
        """A resumed run's participants, as its checkpoint saved them; every host is told (the participants it
        has no entry for had an empty memory)."""
        by_host: dict[int, dict[int, dict]] = {host: {} for host in range(len(self.actors))}
        for pid, state in states.items():
            by_host[int(self.host_of[pid])][pid] = state
        ray.get([self.actors[h].import_state.remote(s) for h, s in by_host.items()], timeout=timeout_s)

    def memory_killed(self, host: int) -> bool:
        """Whether the kernel killed the host's process at its memory limit (enforced devices)."""
        return self.enforced is not None and self.enforced.oom_kills(host, self.generations[host]) > 0

    def shutdown(self) -> None:
        """End the hosts; an enforced run's control groups go with them (their processes killed, if still there)."""
        for actor in self.actors:
            ray.kill(actor)
        if self.enforced is not None:
            self.enforced.remove()


def own_devices(fleet) -> list:  # noqa: ANN001 (Fleet -> DeviceProfile)
    """Each participant's own device (its class's profile with its drawn or listed figures): what it is enforced
    as."""
    return [fleet.device_of(pid) for pid in range(len(fleet))]


def enforced_hosts(fleet, plan, most: int, budget: float,  # noqa: ANN001 (Fleet, EnforcementPlan)
                   classes: np.ndarray | None = None) -> tuple[list[np.ndarray], str]:
    """Hosts of an enforced run, and a line that says how many and why: at most `most`, grouped by device class
    where there are hosts enough for every class (so that a host's quota rarely changes between tasks), and no
    more than the node's cores hold at once: the quotas the hosts may hold together (each its participants' largest)
    stay within `budget` cores, since hosts that contend for cores would measure the contention, not the devices."""
    quota = np.asarray([plan.quota(device) for device in own_devices(fleet)])
    by_class = classes if classes is not None else fleet.profile_of
    for count in range(most, 0, -1):
        assignment = assign_hosts(len(fleet), count, by_class if count >= len(np.unique(by_class)) else classes)
        held = float(sum(quota[members].max() for members in assignment))
        if held <= budget + 1e-9:
            fewer = f", fewer than the {most} the CPUs allow: their quotas must fit" if len(assignment) < most else ""
            return assignment, (f"{len(assignment)} hosts at once{fewer} ({held:.2f} of {budget:g} cores in quotas; "
                                f"slowdown {plan.slowdown:g}, cgroup v{plan.version})")
    raise RuntimeError(f"runtime.enforce: one host's quota ({quota.max():.2f} cores) is more than the {budget:g} "
                       "cores the run's hosts may use (runtime.host_cpus)")


def evaluation_beside_training(hosts: int, threads: int, budget: float) -> tuple[bool, str]:
    """Whether an enforced run's evaluation may run beside its next step, and a line saying so. A host evaluates at
    its whole threads (evaluation is not the device's work: no quota), so only where every host at its whole threads
    fits the run's cores at once does an evaluating host leave the training ones the cores their quotas measure on;
    elsewhere the evaluation runs between steps."""
    if hosts * threads <= budget + 1e-9:
        return True, "evaluation beside the next step"
    return False, (f"evaluation between steps ({hosts} hosts at {threads} thread(s) each would exceed the "
                   f"{budget:g} cores)")


def assign_hosts(participants: int, n_hosts: int, classes: np.ndarray | None = None) -> list[np.ndarray]:
    """Sticky assignment of participants 0 .. `participants`-1 to hosts: round-robin, or within device classes
    when `classes` (each participant's) is given, so that a host serves one class and can be placed on that
    class's nodes; classes in the order of their first participant."""
    ids = np.arange(participants)
    if classes is None:
        return [ids[h::n_hosts] for h in range(n_hosts)]
    present, first = np.unique(classes, return_index=True)
    hosts: list[np.ndarray] = []
    share = max(1, n_hosts // len(present))
    for cls in present[np.argsort(first)]:
        members = ids[classes == cls]
        count = min(share, len(members))
        hosts.extend(members[h::count] for h in range(count))
    return hosts


def device_resource(profile_name: str) -> str:
    """The custom resource a node offers for a device class (`ray start --resources '{"device:NAME": 1000}'`)."""
    return f"device:{profile_name}"


def unoffered(ask: dict) -> str:
    """The custom resources of an actor's `ask` that no alive node of the cluster has at all ('' if every one
    is somewhere), comma-separated."""
    offered: set[str] = set()
    for node in ray.nodes():
        if node.get("Alive"):
            offered.update(k for k, v in node.get("Resources", {}).items() if v > 0)
    return ", ".join(sorted(set(ask.get("resources", {})) - offered))
