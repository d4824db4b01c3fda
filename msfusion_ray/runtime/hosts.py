"""The pool of host actors a run uses, and which participant lives where."""

from __future__ import annotations

import ray

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.experiment import Prepared
from msfusion_ray.runtime.host import HostActor, assign_hosts
from msfusion_ray.runtime.participant import ParticipantSpec, WorkerSettings

STARTUP_TIMEOUT_S = 300.0


def host_count(runtime: RuntimeConfig, participants: int) -> int:
    """Host actors a run starts: runtime.hosts, else one per participant up to runtime.max_hosts."""
    return min(runtime.hosts or min(participants, runtime.max_hosts), participants)


class HostPool:
    def __init__(self, prepared: Prepared, data_ref: ray.ObjectRef, run_id: str):
        runtime = prepared.config.runtime
        fleet = prepared.fleet
        ids = [p.id for p in fleet.participants]
        groups = {p.id: p.device.name for p in fleet.participants} if runtime.device_resources else None
        assignments = assign_hosts(ids, host_count(runtime, len(ids)), groups)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        # Hosts share the run's CPU budget logically (several runs of a sweep share the cluster); each caps its real
        # threads with torch.set_num_threads.
        budget = runtime.host_cpus if runtime.host_cpus is not None else 0.9 * cpus
        num_cpus = round(min(float(runtime.threads_per_host), budget / len(assignments)), 4)
        settings = WorkerSettings(run_id=run_id, host=0, seed=prepared.config.seed,
                                  training=prepared.config.training, clock=runtime.clock,
                                  task_timeout_s=runtime.task_timeout_s)
        self.host_of: dict[int, int] = {}
        self.actors = []
        for host_id, members in enumerate(assignments):
            specs = [ParticipantSpec(pid, fleet.participants[pid].device, fleet.participants[pid].memory_cap_bytes,
                                     prepared.partitions[pid]) for pid in members]
            options: dict = {"num_cpus": num_cpus}
            if groups is not None:
                options["resources"] = {f"device:{groups[members[0]]}": 0.001}
            host_settings = WorkerSettings(**{**settings.__dict__, "host": host_id})
            self.actors.append(HostActor.options(**options).remote(
                host_id, prepared.family, [data_ref], specs, host_settings, runtime.threads_per_host,
                runtime.task_timeout_s))
            self.host_of.update({pid: host_id for pid in members})
        self._wait_ready(cpus)

    def _wait_ready(self, cpus: float) -> None:
        pings = [actor.ping.remote() for actor in self.actors]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=STARTUP_TIMEOUT_S)
        if len(ready) < len(pings):
            raise RuntimeError(f"only {len(ready)} of {len(pings)} host actors started within {STARTUP_TIMEOUT_S:.0f} s "
                               f"(cluster CPUs: {cpus:g}); lower runtime.hosts or runtime.threads_per_host")
        ray.get(ready, timeout=STARTUP_TIMEOUT_S)  # surfaces a host that failed in its constructor

    def actor_for(self, participant: int):  # noqa: ANN201 (a Ray actor handle)
        return self.actors[self.host_of[participant]]

    def export_states(self, tasks: dict[int, int], timeout_s: float) -> dict[int, dict]:
        """Every participant's memory as of its task in `tasks` (participant -> its last aggregated task)."""
        states: dict[int, dict] = {}
        for part in ray.get([a.export_state.remote(tasks) for a in self.actors], timeout=timeout_s):
            states.update(part)
        return states

    def import_states(self, states: dict[int, dict], timeout_s: float) -> None:
        by_host: dict[int, dict[int, dict]] = {}
        for pid, state in states.items():
            by_host.setdefault(self.host_of[pid], {})[pid] = state
        ray.get([self.actors[h].import_state.remote(s) for h, s in by_host.items()], timeout=timeout_s)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
