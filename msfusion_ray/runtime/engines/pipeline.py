"""The pipeline engine: split learning through a chain of actors, one epoch per step (MP-SL; one compute node is
one-hop parallel split learning).

Before the first epoch the engine plans the run (msfusion_ray/pipeline/plan.py): the layers are profiled once,
the strategy chooses the split, and one stage actor starts per compute node, in pipeline order, each connected to
its neighbours. Every epoch:

1. each stage checks that its copies fit (one per data owner, one batch in flight per owner) and builds them; a stage
   that cannot is recorded `oom`, and the run ends after that step with the reason in one line;
2. every reachable data owner gets a work order (procedure `pipeline_owner`, on its host actor) with its first and
   last parts and a link to the first and last stage; activations and gradients then travel owner -> stage 1 ->
   ... -> owner and back as calls between the actors, never through the driver, and stages serve several owners'
   batches at once;
3. each stage averages its copies (sample-weighted), the aggregator's average of the owners' parts is folded in, and
   the strategy gives the new global model;
4. the epoch is placed on the shared virtual timeline: every message's seconds come from what it carried (counted
   FLOPs / FLOP/s, bytes / bandwidth + latency, by each device's profile) and the discrete-event schedule of
   pipeline/schedule.py; EdgeSys'25's closed form of the planned split is reported beside it.

Rows: one per owner (role `participant`), one per compute node (role `compute`: FLOPs, bytes each way, busy and idle
device time, memory planned, capped and measured) and one for the aggregator, per epoch.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import ray

from msfusion_ray.models.weights import Weights
from msfusion_ray.pipeline.measured import MeasuredTimes
from msfusion_ray.pipeline.plan import PipelinePlanner, owner_batches
from msfusion_ray.pipeline.schedule import EpochSchedule, schedule_epoch
from msfusion_ray.pipeline.time_model import OwnerTimes, PipelineTimes, edgesys_estimate
from msfusion_ray.procedures.orders import WorkOrder
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.engines.base import EngineContext, Step, absent_row, register_engine
from msfusion_ray.runtime.engines.sync import SyncEngine
from msfusion_ray.runtime.host_pool import STARTUP_TIMEOUT_S
from msfusion_ray.runtime.pipeline_stage import StageActor, StageLink
from msfusion_ray.strategies.base import Update


class PipelineStopped(RuntimeError):
    """The pipeline cannot go on (a compute node cannot hold its copies): the reason, in one line."""


@register_engine("pipeline")
class PipelineEngine(SyncEngine):
    """Reuses the synchronous engine's reachability draw and its dispatch of work orders to host actors (the data
    owners); adds the stages, the timeline of messages and the pipeline's records."""

    def __init__(self, context: EngineContext, weights: Weights):
        super().__init__(context, weights)
        experiment, training = context.experiment, context.config.training
        batches = [owner_batches(len(p), training) for p in experiment.partitions]
        self.planner = PipelinePlanner(experiment.family, experiment.fleet, training, context.strategy.params, batches)
        split = context.strategy.choose_split(self.planner)
        self.fits_nowhere = split is None
        self.plan = self.planner.plan(split if split is not None else self.planner.split("equal"))
        self.stages: list[Any] = []
        self.node_clock = [0.0] * len(self.plan.nodes)
        self.stopped: str | None = None

    def steps(self, start: int) -> Iterator[Step]:
        try:
            for epoch in range(start, self.context.config.rounds + 1):
                if self.context.out_of_time(self.now):
                    return
                yield self.epoch(epoch)
                if self.stopped is not None:
                    raise PipelineStopped(self.stopped)
        finally:
            for stage in self.stages:
                ray.kill(stage)
            self.stages = []

    def _start_stages(self) -> None:
        context, plan = self.context, self.plan
        runtime = context.config.runtime
        self.stages = [StageActor.options(num_cpus=0).remote(
            position, context.experiment.family, layer_range, context.config.training, context.config.seed,
            node.memory_cap_bytes, node.device.native, runtime.threads_per_host)
            for position, (node, layer_range) in enumerate(zip(plan.nodes, plan.split.ranges))]
        ray.get([stage.ping.remote() for stage in self.stages], timeout=STARTUP_TIMEOUT_S)
        neighbours = [(self.stages[p + 1] if p + 1 < len(self.stages) else None, self.stages[p - 1] if p else None)
                      for p in range(len(self.stages))]
        ray.get([stage.connect.remote(*pair) for stage, pair in zip(self.stages, neighbours)],
                timeout=STARTUP_TIMEOUT_S)

    def epoch(self, epoch: int) -> Step:
        started = time.perf_counter()
        if not self.stages:
            self._start_stages()
        context, strategy, plan = self.context, self.context.strategy, self.plan
        timeout = context.config.runtime.task_timeout_s
        owners = [p.id for p in context.experiment.fleet.participants]
        reachable = self.reachable(epoch, owners)
        rows = [absent_row(context, epoch, pid, self.now) for pid in owners if not reachable[pid]]
        present = [pid for pid in owners if reachable[pid]]
        verdicts = ray.get([stage.begin_epoch.remote(epoch, ray.put(self._part(a, b)), present, context.lr(epoch),
                                                     memory)
                            for stage, (a, b), memory in zip(self.stages, plan.split.ranges, plan.split.memory_bytes)],
                           timeout=timeout)
        if any(v["status"] == "oom" for v in verdicts):
            return self._stopped_step(epoch, verdicts, rows, started)
        orders = [self._order(pid, epoch) for pid in present]
        accumulator = strategy.new_accumulator(self.weights)
        results = {}
        for task, (row, payload, trained) in self.collect(epoch, orders):
            results[task.participant] = (row, payload, trained)
            if row.status == "ok" and payload is not None:
                strategy.fold_owner(accumulator, Update(task.participant, payload, row.samples, task.base_version))
                self.consumed[task.participant] = task.task
        samples = {pid: row.samples for pid, (row, _, _) in results.items() if row.status == "ok"}
        ends = ray.get([stage.end_epoch.remote(samples) for stage in self.stages], timeout=timeout)
        for averaged, _ in ends:
            if averaged:
                strategy.fold_part(accumulator, averaged)
        self.weights, metrics = strategy.combine(epoch, self.weights, accumulator)
        measured = self._measured(results, [report for _, report in ends])
        schedule = schedule_epoch(measured)
        rows += self._owner_rows(results, measured, schedule)
        rows += self._node_rows(epoch, verdicts, [report for _, report in ends], measured, schedule)
        rows.append(self._aggregator_row(epoch, measured, schedule))
        metrics.update(self._metrics(results, measured, schedule))
        vt_start = self.now
        self.now += schedule.total_s
        return Step(epoch, rows, self.weights, metrics, vt_start, self.now, time.perf_counter() - started)

    def _part(self, start: int, end: int) -> Weights:
        return {k: self.weights[k] for k in self.context.strategy.part_keys(start, end)}

    def _order(self, participant: int, epoch: int) -> WorkOrder:
        plan, strategy = self.plan, self.context.strategy
        order = strategy.owner_order(participant, plan.front, plan.back)
        link = StageLink(participant, self.stages[0], self.stages[-1], self.context.config.runtime.task_timeout_s)
        extras = {**order.extras, "link": link, "planned_bytes": plan.owners[participant].memory_bytes}
        return replace(order, task=self.next_task(), seed_key=(epoch,), base_version=epoch - 1,
                       state_from=self.state_from(participant), vt_start=self.now, extras=extras)

    def _measured(self, results: dict, reports: list[dict]) -> MeasuredTimes:
        fleet, plan = self.context.experiment.fleet, self.plan
        logs = {pid: trained["pipeline_batches"] for pid, (row, _, trained) in results.items()
                if row.status == "ok"}
        parts = {pid: self.planner.owner_part_bytes() for pid in logs}
        return MeasuredTimes([fleet.device_of(p.id) for p in fleet.participants], [n.device for n in plan.nodes],
                             self.planner.aggregator.device, logs, [r["log"] for r in reports], parts)

    def _owner_rows(self, results: dict, measured: MeasuredTimes, schedule: EpochSchedule) -> list:
        rows = []
        for pid, (row, _, trained) in sorted(results.items()):
            if row.status == "ok":
                self._place_owner(row, pid, trained, measured, schedule)
            self.context.timeline.record(row)
            rows.append(row)
        return rows

    def _place_owner(self, row: ParticipantRoundRow, pid: int, trained: dict, measured: MeasuredTimes,
                     schedule: EpochSchedule) -> None:
        """An owner's row on the timeline: its compute, its transfers, its share of the epoch."""
        batches = range(measured.owner_batches(pid))
        up = sum(measured.owner_s(pid, b, k) for b in batches for k in ("to_first", "to_last"))
        down = sum(measured.owner_s(pid, b, k) for b in batches for k in ("from_last", "from_first"))
        up, down = up + measured.owner_s(pid, 0, "upload"), down + measured.owner_s(pid, 0, "download")
        row.bytes_up += sum(e["sent_bytes"] for e in trained["pipeline_batches"])  # besides its trained parts
        row.device_compute_s = schedule.owner_busy_s[pid]
        row.device_upload_s, row.device_download_s = up, down
        row.device_comm_s = up + down
        row.device_time_s = row.device_compute_s + row.device_comm_s
        row.vt_start, row.vt_end = self.now, self.now + schedule.owner_updated_s[pid]
        row.predicted_device_s = float(self.plan.owners[pid].batches * _owner_batch_s(self.plan.times.owners[pid]))
        row.metrics = {**row.metrics, "idle_s": row.vt_end - row.vt_start - row.device_time_s,
                       "done_s": schedule.owner_done_s[pid]}

    def _node_rows(self, epoch: int, verdicts: list[dict], reports: list[dict], measured: MeasuredTimes | None,
                   schedule: EpochSchedule | None) -> list[ParticipantRoundRow]:
        rows = []
        for position, node in enumerate(self.plan.nodes):
            (a, b), verdict = self.plan.split.ranges[position], verdicts[position]
            row = ParticipantRoundRow(
                run_id=self.context.run_id, round=epoch, participant=node.id, device=node.device.name,
                host=position, status=verdict["status"], role="compute", mem_planned_bytes=verdict["planned_bytes"],
                mem_cap_bytes=node.memory_cap_bytes, vt_start=self.now, vt_end=self.now,
                metrics={"layer_start": float(a), "layer_end": float(b)})
            if verdict["status"] == "oom":
                layers = f"layer {a}" if b - a == 1 else f"layers {a}-{b - 1}"
                row.message = (f"cannot hold {len(self.plan.owners)} copies of {layers}: needs "
                               f"{verdict['planned_bytes'] / 2**20:.1f} MiB, cap {node.memory_cap_bytes / 2**20:.1f} MiB")
            elif schedule is not None:
                self._place_node(row, position, reports[position], measured, schedule)
            rows.append(row)
        return rows

    def _place_node(self, row: ParticipantRoundRow, position: int, report: dict, measured: MeasuredTimes,
                    schedule: EpochSchedule) -> None:
        log = report["log"]
        last = position == len(self.plan.nodes) - 1
        sent_s = 0.0
        for owner, batch, kind, _, _, _ in log:
            if kind == "forward":
                sent_s += (measured.owner_s(owner, batch, "from_last") if last
                           else measured.hop_s(position, owner, batch, "forward"))
            else:
                sent_s += (measured.owner_s(owner, batch, "from_first") if position == 0
                           else measured.hop_s(position - 1, owner, batch, "backward"))
        busy = schedule.node_busy_s[position]
        self.node_clock[position] += busy
        row.flops = sum(entry[3] for entry in log)
        row.bytes_down, row.bytes_up = sum(entry[4] for entry in log), sum(entry[5] for entry in log)
        row.steps = len(log)
        row.device_compute_s, row.device_upload_s, row.device_comm_s = busy, sent_s, sent_s
        row.device_time_s = busy + sent_s
        row.device_clock_s = self.node_clock[position]
        row.vt_end = self.now + schedule.epoch_s
        row.mem_peak_tensor_bytes, row.mem_peak_rss_bytes = report["peak_tensor_bytes"], report["peak_rss_bytes"]
        row.metrics = {**row.metrics, "idle_s": schedule.epoch_s - busy,
                       "idle_share": 1 - busy / schedule.epoch_s if schedule.epoch_s > 0 else 0.0}

    def _aggregator_row(self, epoch: int, measured: MeasuredTimes, schedule: EpochSchedule) -> ParticipantRoundRow:
        aggregator = self.planner.aggregator
        owners = list(measured.part_bytes)
        return ParticipantRoundRow(
            run_id=self.context.run_id, round=epoch, participant=aggregator.id, device=aggregator.device.name,
            host=-1, status="ok", role="aggregator", bytes_down=sum(measured.part_bytes.values()),
            bytes_up=sum(measured.part_bytes.values()),
            device_comm_s=sum(measured.owner_s(pid, 0, "download") for pid in owners),
            device_time_s=sum(measured.owner_s(pid, 0, "download") for pid in owners),
            vt_start=self.now + schedule.aggregated_s, vt_end=self.now + schedule.total_s)

    def _metrics(self, results: dict, measured: MeasuredTimes, schedule: EpochSchedule) -> dict[str, float]:
        """The epoch on the timeline beside EdgeSys'25's closed form of the planned split, and bytes per hop (hop 0:
        owners and the first compute node, hop h: compute nodes h and h + 1, hop N: the last node and the owners)."""
        trained = {pid: measured.owner_batches(pid) for pid in results if measured.owner_batches(pid) > 0}
        metrics: dict[str, float] = {"epoch_schedule_s": schedule.epoch_s, "aggregation_s": schedule.aggregation_s,
                                     "pipe_full_s": self.plan.split.pipe_full_s}
        if trained:
            owners = tuple(replace(self.plan.times.owners[pid], batches=n) for pid, n in trained.items())
            estimate = edgesys_estimate(PipelineTimes(owners, self.plan.times.stages, self.plan.times.hops_forward_s,
                                                      self.plan.times.hops_backward_s))
            metrics["epoch_closed_form_s"] = estimate.epoch_s
            metrics["closed_form_gap"] = (estimate.epoch_s - schedule.epoch_s) / schedule.epoch_s
        hops = np.zeros(len(self.plan.nodes) + 1)
        for pid, n in trained.items():
            for entry in (measured.owner_logs[pid][b] for b in range(n)):
                hops[0] += entry["activation_bytes"] + entry["first_gradient_bytes"]
                hops[-1] += entry["returned_bytes"] + entry["gradient_bytes"]
        for node, log in enumerate(measured.node_logs[:-1]):
            hops[node + 1] += sum(sent for _, _, kind, _, _, sent in log if kind == "forward")
            hops[node + 1] += sum(sent for _, _, kind, _, _, sent in measured.node_logs[node + 1]
                                  if kind == "backward")
        metrics.update({f"hop{h}_bytes": float(v) for h, v in enumerate(hops)})
        return metrics

    def _stopped_step(self, epoch: int, verdicts: list[dict], rows: list, started: float) -> Step:
        """A compute node cannot hold its copies: its row says so, and the run ends with that reason."""
        rows = rows + self._node_rows(epoch, verdicts, [], None, None)
        refused = [r for r in rows if r.role == "compute" and r.status == "oom"]
        first = refused[0]
        reason = f"compute node {first.participant} ({first.device}) {first.message}"
        if self.fits_nowhere:
            reason += "; no split of the model over these compute nodes fits their memory"
        self.stopped = reason
        return Step(epoch, rows, self.weights, {}, self.now, self.now, time.perf_counter() - started)

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        values, arrays = super().state_dict()
        return {**values, "node_clock": list(self.node_clock)}, arrays

    def load_state_dict(self, values: dict, arrays: dict[str, np.ndarray]) -> None:
        super().load_state_dict(values, arrays)
        self.node_clock = [float(v) for v in values["node_clock"]]


def _owner_batch_s(times: OwnerTimes) -> float:
    """An owner's own device seconds per full batch, as planned: compute and transfers."""
    return (times.front_forward_s + times.back_s + times.front_backward_s + times.to_first_s + times.from_last_s
            + times.to_last_s + times.from_first_s)
