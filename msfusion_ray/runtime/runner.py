"""What a driver actor runs: the engine the strategy names, and what every engine shares around it.

The Runner starts the hosts (or takes those the launcher started), builds the engine and consumes its steps (a
synchronous round, an aggregation of the async buffer, a pipeline epoch). After each step its callbacks run in
order: evaluation, records, checkpoint, progress (pfl-research's model: plug-ins of the training process, not
lines in a round loop); any callback may stop the run. It never names an algorithm: the strategy plans and
combines, the engine moves the work.

A step's model is final when the next step starts, so its evaluation (on the hosts, each a share of the batches)
may run beside the next step: the callbacks then start what must see the run exactly at the step's boundary
(the evaluation, the checkpoint's state) as soon as the step is yielded, and finish the step (its evaluation's
figures, records, the checkpoint on disk, progress) once the next step is done. The records and checkpoints on
disk are the same either way, in the same order.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ObjectLostError, OutOfMemoryError, RayActorError

from msfusion_ray.devices.energy import stamp_energy
from msfusion_ray.devices.spread import fleet_parts
from msfusion_ray.devices.timeline import VirtualTimeline
from msfusion_ray.experiment.prepare import Experiment
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.models.weights import Weights, to_weights
from msfusion_ray.records import RecordWriter, RoundRow, history_entry, host_rows, read_round_rows
from msfusion_ray.runtime.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from msfusion_ray.runtime.engines import EngineContext, Step, make_engine
from msfusion_ray.runtime.engines.dispatch import RayHosts
from msfusion_ray.runtime.host_pool import HostPool
from msfusion_ray.training.evaluate_shards import Chunk, combine_chunks, evaluation_splits, label_elements, plan_chunks

log = logging.getLogger(__name__)
METRIC_COLUMNS = [f"{split}_{name}" for split in ("test", "val") for name in ("accuracy", "loss", "perplexity")]


def initial_weights(experiment: Experiment) -> Weights:
    torch.manual_seed(experiment.config.seed)
    return to_weights(experiment.family.build())


def calibration_indices(experiment: Experiment) -> np.ndarray:
    """A seeded sample of training data on which the global model's BatchNorm statistics are recomputed."""
    train = experiment.data.train
    size = min(experiment.config.runtime.bn_calibration_samples, len(train))
    return np.sort(np.random.default_rng([experiment.config.seed, 0xB7]).choice(len(train), size, replace=False))


@dataclass
class StepReport:
    """A step as the callbacks see it, filled in as they run."""

    step: Step
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    wall_eval_s: float = 0.0
    round_row: RoundRow | None = None
    checkpointed: bool = False
    started: dict[str, Any] = field(default_factory=dict)  # what callbacks started at the boundary, by callback


class RunCallback:
    """A plug-in of the run: called at every step's boundary (before the engine goes on), after every step
    (perhaps once the next step is done; return True to stop the run), and once at its end."""

    def at_boundary(self, runner: "Runner", report: StepReport) -> None:
        """Start what must see the run exactly as the step left it; finish it in `after_step`."""

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        return False

    def after_run(self, runner: "Runner", last: StepReport | None) -> None:
        pass


@dataclass
class EvaluationInFlight:
    weights: ray.ObjectRef
    shares: list[list[Chunk]]  # per host that was given any, its chunks
    hosts: list[int]  # per share, the host it was sent to
    answers: list[ray.ObjectRef]  # per share: (figures per chunk, seconds)


class Evaluation(RunCallback):
    """The global model on the test split (and the validation split where the data set has one) every
    `runtime.eval_every` steps and after the last, after recomputing its BatchNorm statistics. Every host
    evaluates a share of the batches (all the CPUs the run has, at its hosts' threads), queued after the work
    already sent to it; the figures are those of one process evaluating every batch in order."""

    def __init__(self, experiment: Experiment, hosts: HostPool):
        self.experiment = experiment
        self.hosts = hosts
        self.calibration = calibration_indices(experiment)
        self.sizes = {name: len(split) for name, split in evaluation_splits(experiment.data).items()}
        self.label_elements = label_elements(experiment.data)

    def due(self, index: int) -> bool:
        return index % self.experiment.config.runtime.eval_every == 0 or index == self.experiment.config.rounds

    def start(self, weights: Weights) -> EvaluationInFlight:
        runtime = self.experiment.config.runtime
        batch = runtime.eval_batch_size
        started = EvaluationInFlight(ray.put(weights), [], [], [])
        for host, share in enumerate(plan_chunks(self.sizes, batch, len(self.hosts.actors))):
            if share:
                started.shares.append(share)
                started.hosts.append(host)
                started.answers.append(self._send(host, started.weights, share))
        return started

    def _send(self, host: int, weights: ray.ObjectRef, share: list[Chunk]) -> ray.ObjectRef:
        runtime = self.experiment.config.runtime
        return self.hosts.actors[host].evaluate.remote(weights, share, self.calibration, runtime.eval_batch_size,
                                                       runtime.bn_calibration_batch_size)

    def finish(self, started: EvaluationInFlight) -> tuple[dict[str, dict[str, float]], float]:
        """The figures per split, and the evaluation's wall seconds (its slowest host's)."""
        answers = [self._answer(started, k) for k in range(len(started.answers))]
        chunks = [chunk for share in started.shares for chunk in share]
        parts = [part for figures, _ in answers for part in figures]
        return combine_chunks(chunks, parts, self.label_elements), max((s for _, s in answers), default=0.0)

    def _answer(self, started: EvaluationInFlight, k: int) -> tuple[list[dict[str, float]], float]:
        """Share k's figures. A host whose process died (the engine replaces it when its next task comes back)
        costs a resend of its share to the next host, or to its replacement: every host computes the same
        figures, so the result does not depend on which one did."""
        timeout_s = self.experiment.config.runtime.task_timeout_s
        hosts = len(self.hosts.actors)
        for attempt in range(hosts + 1):
            ref = started.answers[k] if attempt == 0 else self._send((started.hosts[k] + attempt) % hosts,
                                                                     started.weights, started.shares[k])
            try:
                return ray.get(ref, timeout=timeout_s)
            except (RayActorError, OutOfMemoryError, ObjectLostError) as err:  # lost: with its node
                if attempt == hosts:
                    raise
                log.warning("evaluation: %s; its share is sent to another host",
                            self.hosts.describe(err, (started.hosts[k] + attempt) % hosts))
        raise AssertionError("unreachable")

    def evaluate(self, weights: Weights) -> tuple[dict[str, dict[str, float]], float]:
        return self.finish(self.start(weights))

    def at_boundary(self, runner: "Runner", report: StepReport) -> None:
        if self.due(report.step.index):
            report.started["evaluation"] = self.start(report.step.weights)

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        started = report.started.pop("evaluation", None)
        if started is not None:
            report.evaluation, report.wall_eval_s = self.finish(started)
        return False

    def after_run(self, runner: "Runner", last: StepReport | None) -> None:
        """A run that ended early (time budget, a callback's stop) still has its final model evaluated."""
        if last is not None and not last.evaluation:
            last.evaluation, last.wall_eval_s = self.evaluate(last.step.weights)
            runner.records.after_step(runner, last)  # the step's round row again, now with its evaluation


class Records(RunCallback):
    """The step's participant rows and round row, written as the run goes; the history its summary keeps."""

    def __init__(self, run_dir: Path, run_id: str, strategy: str):
        self.writer = RecordWriter(run_dir)
        self.run_id = run_id
        self.strategy = strategy
        self.history: list[dict[str, float]] = []

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        step = report.step
        stamp_energy(step.rows, runner.experiment.fleet.device_for)
        values = {column: report.evaluation.get(column.split("_")[0], {}).get(column.split("_")[1], math.nan)
                  for column in METRIC_COLUMNS}
        others = {f"{split}_{key}": value for split, figures in report.evaluation.items()
                  for key, value in figures.items() if f"{split}_{key}" not in METRIC_COLUMNS}
        report.round_row = RoundRow.summarise(self.run_id, step.index, self.strategy, step.rows,
                                              wall_round_s=step.wall_s, wall_eval_s=report.wall_eval_s,
                                              vt_start=step.vt_start, vt_end=step.vt_end,
                                              device_utilisation=step.utilisation,
                                              strategy_metrics=step.metrics, eval_metrics=others, **values)
        self.writer.write_round(step.rows, report.round_row)
        entry = history_entry(report.round_row)
        if self.history and self.history[-1]["round"] == step.index:
            self.history[-1] = entry
        else:
            self.history.append(entry)
        return False


class HostRecords(RunCallback):
    """Where hosts train on GPUs: a row per host and step with its GPU share and what NVML saw of its GPU."""

    def __init__(self, writer: RecordWriter, run_id: str, hosts: list[dict[str, Any]]):
        self.writer = writer
        self.run_id = run_id
        self.hosts = hosts

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        step = report.step
        self.writer.write_hosts(step.index, host_rows(self.run_id, step.index, self.hosts, step.rows))
        return False


class Checkpointing(RunCallback):
    """Everything a resume needs, every `runtime.checkpoint_every` steps and after the last: the state as of the
    step's boundary, written once the step's records are."""

    def at_boundary(self, runner: "Runner", report: StepReport) -> None:
        index = report.step.index
        if index % runner.config.runtime.checkpoint_every == 0 or index == runner.config.rounds:
            report.started["checkpoint"] = runner.snapshot(report.step)

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        snapshot = report.started.pop("checkpoint", None)
        if snapshot is not None:
            runner.save_checkpoint(snapshot)
            report.checkpointed = True
        return False

    def after_run(self, runner: "Runner", last: StepReport | None) -> None:
        if last is not None and not last.checkpointed and runner.engine.at_step_boundary():
            runner.checkpoint(last.step)


class Progress(RunCallback):
    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        row = report.round_row
        runner.progress = {"round": report.step.index, "rounds": runner.config.rounds, "status": "running",
                           "vt": report.step.vt_end, "accuracy": row.test_accuracy, "perplexity": row.test_perplexity,
                           "ok": row.participants_ok, "oom": row.participants_oom}
        return False


@dataclass
class CheckpointSnapshot:
    """A checkpoint as of a step's boundary, before it is written: the participants' states are on their way."""

    index: int
    weights: Weights
    strategy: tuple[dict[str, Any], dict[str, np.ndarray]]
    engine: tuple[dict[str, Any], dict[str, np.ndarray]]
    tasks: dict[int, int]  # participant -> the task whose state it keeps (those with any: the others' is empty)
    participant_states: list[tuple[int, ray.ObjectRef]]  # per host: (its generation, its answer)


class Runner:
    def __init__(self, experiment: Experiment, data_ref: ray.ObjectRef, run_dir: str | Path, run_id: str,
                 resume: bool = False, hosts: HostPool | None = None):
        self.experiment = experiment
        self.config = experiment.config
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.started = time.time()
        torch.set_num_threads(self.config.runtime.threads_per_host)
        self.hosts = hosts if hosts is not None else HostPool(Shipment.of(experiment), data_ref, run_id)
        self.hosts.saved_states = self._saved_participant_states  # what a replaced host's participants restore
        self.hosts.wait_ready()
        self.timing: dict[str, Any] = {"runner_started": self.started, "hosts_ready": time.time(), "steps": []}
        self.context = EngineContext(experiment, RayHosts(self.hosts), run_id, VirtualTimeline(len(experiment.fleet)),
                                     experiment.availability, experiment.participant_infos())
        self.engine = make_engine(experiment.strategy.engine, self.context, initial_weights(experiment))
        self.records = Records(self.run_dir, run_id, experiment.strategy.name)
        self.records.writer.write_fleet(fleet_parts(experiment.fleet))
        self.callbacks: list[RunCallback] = [Evaluation(experiment, self.hosts), self.records, Checkpointing(),
                                             Progress()]
        if self.hosts.descriptions:
            self.callbacks.insert(2, HostRecords(self.records.writer, run_id, self.hosts.descriptions))
        self.start_step = 1
        self.progress: dict[str, Any] = {"round": 0, "rounds": self.config.rounds, "status": "starting"}
        if resume:
            self._restore()

    @property
    def history(self) -> list[dict[str, float]]:
        return self.records.history

    def _restore(self) -> None:
        checkpoint = load_checkpoint(self.run_dir)
        if checkpoint is None:
            return
        self.engine.weights = checkpoint.weights
        self.experiment.strategy.load_state_dict(checkpoint.strategy_values, checkpoint.strategy_arrays)
        self.engine.load_state_dict(checkpoint.engine_values, checkpoint.engine_arrays)
        self.hosts.import_states(checkpoint.participants, self.config.runtime.task_timeout_s)
        self.records.writer.discard_after(checkpoint.round)
        self.start_step = checkpoint.round + 1
        self.records.history = recorded_history(self.run_dir)

    def _saved_participant_states(self) -> dict[int, dict] | None:
        checkpoint = load_checkpoint(self.run_dir)
        return checkpoint.participants if checkpoint is not None else None

    def run(self) -> dict[str, Any]:
        self.timing["run_started"] = time.time()
        try:
            last = waiting = None  # waiting: a step whose evaluation runs beside the next step
            stop = False
            for step in self.engine.steps(self.start_step):
                self.timing["steps"].append(time.time())
                last = StepReport(step)
                for callback in self.callbacks:
                    callback.at_boundary(self, last)
                if waiting is not None:
                    finishing, waiting = waiting, None
                    stop = self._finish_step(finishing)
                if self._overlaps_next_step(last) and not stop:
                    waiting = last
                elif self._finish_step(last) or stop:
                    break
            if waiting is not None:
                waiting, finishing = None, waiting
                self._finish_step(finishing)
            for callback in self.callbacks:
                callback.after_run(self, last)
            self.timing["finished"] = time.time()
        except BaseException as err:
            if waiting is not None and isinstance(err, Exception):
                self._finish_quietly(waiting)  # the step before the failure keeps its records and checkpoint
            raise
        finally:
            self.hosts.shutdown()
        return self.summary("complete")

    def _finish_step(self, report: StepReport) -> bool:
        return any([callback.after_step(self, report) for callback in self.callbacks])

    def _finish_quietly(self, report: StepReport) -> None:
        try:
            self._finish_step(report)
        except Exception:  # noqa: BLE001  (the run's own failure is the one to report)
            pass

    def _overlaps_next_step(self, report: StepReport) -> bool:
        """Whether the step's callbacks finish after the next step: only while its evaluation runs, never after
        the last step, nor where hosts pace themselves to wall time (`clock: real`), nor where enforced hosts
        measuring their devices' time would lose cores to it (`HostPool.evaluation_beside`)."""
        runtime = self.config.runtime
        return ("evaluation" in report.started and runtime.eval_overlap and runtime.clock != "real"
                and self.hosts.evaluation_beside and report.step.index < self.config.rounds)

    def snapshot(self, step: Step) -> CheckpointSnapshot:
        """The checkpoint of `step`, taken at its boundary (copies: the engine and the strategy go on)."""
        tasks = self.engine.consumed_tasks()
        return CheckpointSnapshot(step.index, step.weights, copy.deepcopy(self.experiment.strategy.state_dict()),
                                  copy.deepcopy(self.engine.state_dict()), tasks, self.hosts.request_states(tasks))

    def save_checkpoint(self, snapshot: CheckpointSnapshot) -> None:
        participants = self.hosts.gather_states(snapshot.participant_states, snapshot.tasks,
                                                self.config.runtime.task_timeout_s)
        (values, arrays), (engine_values, engine_arrays) = snapshot.strategy, snapshot.engine
        save_checkpoint(self.run_dir, Checkpoint(snapshot.index, snapshot.weights, values, arrays, participants,
                                                 engine_values, engine_arrays))

    def checkpoint(self, step: Step) -> None:
        self.save_checkpoint(self.snapshot(step))

    def summary(self, status: str) -> dict[str, Any]:
        """The run so far as summary.json holds it below its header (the run's id, name, strategy and rounds:
        its launcher writes the file, msfusion_ray.app.run_dir). Copies: `progress` asks for it from a thread of
        its own while the run goes on."""
        history = list(self.history)
        finite = [h["accuracy"] for h in history if not math.isnan(h["accuracy"])]
        return {
            "status": status, "engine": self.engine.name,
            "rounds_completed": history[-1]["round"] if history else 0,
            "virtual_time_s": history[-1]["vt"] if history else 0.0,
            "final_accuracy": finite[-1] if finite else None, "best_accuracy": max(finite) if finite else None,
            "participants": len(self.experiment.fleet), "hosts": len(self.hosts.actors),
            "energy_j": sum(h.get("energy_j", math.nan) for h in history),
            "wall_s": time.time() - self.started, "history": history,
            "timing": {**self.timing, "steps": list(self.timing["steps"])},
        }


def recorded_history(run_dir: Path) -> list[dict[str, float]]:
    """The history of a run's recorded rounds (those up to its checkpoint, where it resumes), as `Records` keeps
    it: read back from the round records, which hold the same figures."""
    if not (run_dir / "records" / "rounds").is_dir():
        return []
    return [history_entry(row) for row in read_round_rows(run_dir).itertuples()]
