"""What a driver actor runs: the engine the strategy names, and what every engine shares around it.

The Runner starts the hosts, builds the engine and consumes its steps (a synchronous round, an aggregation of the
async buffer, a pipeline epoch). After each step its callbacks run in order: evaluation, records, checkpoint,
progress (pfl-research's model: plug-ins of the training process, not lines in a round loop); any callback may
stop the run. It never names an algorithm: the strategy plans and combines, the engine moves the work.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from msfusion_ray.data.arrays import ArrayDataset
from msfusion_ray.devices.gpu import configure_cuda_determinism, release_cuda_memory
from msfusion_ray.devices.timeline import VirtualTimeline
from msfusion_ray.experiment import Prepared
from msfusion_ray.models.weights import Weights, load_weights, to_weights
from msfusion_ray.records import RecordWriter, RoundRow, host_rows
from msfusion_ray.runtime.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from msfusion_ray.runtime.engines import EngineContext, Step, make_engine
from msfusion_ray.runtime.engines.dispatch import RayHosts
from msfusion_ray.runtime.hosts import HostPool
from msfusion_ray.training.evaluate import evaluate, recalibrate_batchnorm

METRIC_COLUMNS = [f"{split}_{name}" for split in ("test", "val") for name in ("accuracy", "loss", "perplexity")]


def initial_weights(prepared: Prepared) -> Weights:
    torch.manual_seed(prepared.config.seed)
    return to_weights(prepared.family.build())


def evaluation_device(hosts_device: str) -> torch.device:
    """The driver evaluates on a GPU where the run trains on GPUs and its own process has one."""
    if hosts_device == "cuda" and torch.cuda.is_available():
        configure_cuda_determinism()
        return torch.device("cuda")
    return torch.device("cpu")


def calibration_split(prepared: Prepared) -> ArrayDataset:
    """A seeded sample of training data on which the global model's BatchNorm statistics are recomputed."""
    train = prepared.data.train
    size = min(prepared.config.runtime.bn_calibration_samples, len(train))
    chosen = np.random.default_rng([prepared.config.seed, 0xB7]).choice(len(train), size, replace=False)
    return train.subset(np.sort(chosen))


@dataclass
class StepReport:
    """A step as the callbacks see it, filled in as they run."""

    step: Step
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    wall_eval_s: float = 0.0
    round_row: RoundRow | None = None
    checkpointed: bool = False


class RunCallback:
    """A plug-in of the run: called after every step (return True to stop the run) and once at its end."""

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        return False

    def after_run(self, runner: "Runner", last: StepReport | None) -> None:
        pass


class Evaluation(RunCallback):
    """The global model on the test split (and the validation split where the data set has one) every
    `runtime.eval_every` steps and after the last, after recomputing its BatchNorm statistics."""

    def __init__(self, prepared: Prepared, device: torch.device = torch.device("cpu")):
        self.prepared = prepared
        self.calibration = calibration_split(prepared)
        self.device = device

    def evaluate(self, weights: Weights) -> tuple[dict[str, dict[str, float]], float]:
        try:
            return self._evaluate(weights, self.device)
        except torch.OutOfMemoryError:  # the driver's GPU is full (hosts share it): the CPU can always evaluate
            release_cuda_memory()
            return self._evaluate(weights, torch.device("cpu"))

    def _evaluate(self, weights: Weights, device: torch.device) -> tuple[dict[str, dict[str, float]], float]:
        started = time.perf_counter()
        model = self.prepared.family.build()
        load_weights(model, weights)
        model.to(device)
        data = self.prepared.data
        batch = self.prepared.config.runtime.eval_batch_size
        recalibrate_batchnorm(model, data, self.calibration, batch)
        splits = {"test": data.test, "val": data.validation}
        metrics = {name: evaluate(model, data, split, batch) for name, split in splits.items() if split is not None}
        return metrics, time.perf_counter() - started

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        index = report.step.index
        if index % self.prepared.config.runtime.eval_every == 0 or index == self.prepared.config.rounds:
            report.evaluation, report.wall_eval_s = self.evaluate(report.step.weights)
        return False

    def after_run(self, runner: "Runner", last: StepReport | None) -> None:
        """A run that ended early (time budget, a callback's stop) still has its final model evaluated."""
        if last is not None and not last.evaluation:
            last.evaluation, last.wall_eval_s = self.evaluate(last.step.weights)
            runner.records.after_step(runner, last)  # the step's round row again, now with its evaluation


class Records(RunCallback):
    """The step's participant rows and round row, written as the run goes; the history in summary.json."""

    def __init__(self, run_dir: Path, run_id: str, strategy: str):
        self.writer = RecordWriter(run_dir)
        self.run_id = run_id
        self.strategy = strategy
        self.history: list[dict[str, float]] = []

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        step = report.step
        values = {column: report.evaluation.get(column.split("_")[0], {}).get(column.split("_")[1], math.nan)
                  for column in METRIC_COLUMNS}
        report.round_row = RoundRow.summarise(self.run_id, step.index, self.strategy, step.rows,
                                              wall_round_s=step.wall_s, wall_eval_s=report.wall_eval_s,
                                              vt_start=step.vt_start, vt_end=step.vt_end,
                                              device_utilisation=step.utilisation,
                                              strategy_metrics=step.metrics, **values)
        self.writer.write_round(step.rows, report.round_row)
        entry = {"round": step.index, "vt": step.vt_end, "accuracy": report.round_row.test_accuracy,
                 "loss": report.round_row.test_loss, "perplexity": report.round_row.test_perplexity,
                 "val_perplexity": report.round_row.val_perplexity}
        if self.history and self.history[-1]["round"] == step.index:
            self.history[-1] = entry
        else:
            self.history.append(entry)
        runner.write_summary("running")
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
    """Everything a resume needs, every `runtime.checkpoint_every` steps and after the last."""

    def after_step(self, runner: "Runner", report: StepReport) -> bool:
        index = report.step.index
        if index % runner.config.runtime.checkpoint_every == 0 or index == runner.config.rounds:
            runner.checkpoint(report.step)
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


class Runner:
    def __init__(self, prepared: Prepared, data_ref: ray.ObjectRef, run_dir: str | Path, run_id: str,
                 resume: bool = False):
        self.prepared = prepared
        self.config = prepared.config
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        torch.set_num_threads(self.config.runtime.threads_per_host)
        self.hosts = HostPool(prepared, data_ref, run_id)
        self.hosts.saved_states = self._saved_participant_states  # what a replaced host's participants restore
        infos = {info.id: info for info in prepared.participant_infos()}
        self.context = EngineContext(prepared, RayHosts(self.hosts), run_id, VirtualTimeline(), prepared.availability,
                                     infos)
        self.engine = make_engine(prepared.strategy.engine, self.context, initial_weights(prepared))
        self.records = Records(self.run_dir, run_id, prepared.strategy.name)
        self.callbacks: list[RunCallback] = [Evaluation(prepared, evaluation_device(self.hosts.device)),
                                             self.records, Checkpointing(), Progress()]
        if self.hosts.descriptions:
            self.callbacks.insert(2, HostRecords(self.records.writer, run_id, self.hosts.descriptions))
        self.start_step = 1
        self.started = time.time()
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
        self.prepared.strategy.load_state_dict(checkpoint.strategy_values, checkpoint.strategy_arrays)
        self.engine.load_state_dict(checkpoint.engine_values, checkpoint.engine_arrays)
        self.hosts.import_states(checkpoint.participants, self.config.runtime.task_timeout_s)
        self.records.writer.discard_after(checkpoint.round)
        self.start_step = checkpoint.round + 1
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            history = json.loads(summary.read_text()).get("history", [])[: checkpoint.round]
            self.records.history = [_none_to_nan(entry) for entry in history]

    def _saved_participant_states(self) -> dict[int, dict]:
        checkpoint = load_checkpoint(self.run_dir)
        return checkpoint.participants if checkpoint is not None else {}

    def run(self) -> dict[str, Any]:
        try:
            last = None
            for step in self.engine.steps(self.start_step):
                last = StepReport(step)
                if any([callback.after_step(self, last) for callback in self.callbacks]):
                    break
            for callback in self.callbacks:
                callback.after_run(self, last)
            self.write_summary("complete")
        except BaseException:
            self.write_summary("failed")
            raise
        finally:
            self.hosts.shutdown()
        return self.summary("complete")

    def checkpoint(self, step: Step) -> None:
        values, arrays = self.prepared.strategy.state_dict()
        engine_values, engine_arrays = self.engine.state_dict()
        participants = self.hosts.export_states(_last_tasks(self.engine.consumed, self.prepared),
                                                self.config.runtime.task_timeout_s)
        save_checkpoint(self.run_dir, Checkpoint(step.index, step.weights, values, arrays, participants,
                                                 engine_values, engine_arrays))

    def summary(self, status: str) -> dict[str, Any]:
        history = self.history
        finite = [h["accuracy"] for h in history if not math.isnan(h["accuracy"])]
        return {
            "run_id": self.run_id, "name": self.config.name, "strategy": self.prepared.strategy.name,
            "engine": self.engine.name, "status": status, "rounds": self.config.rounds,
            "rounds_completed": history[-1]["round"] if history else 0,
            "virtual_time_s": history[-1]["vt"] if history else 0.0,
            "final_accuracy": finite[-1] if finite else None, "best_accuracy": max(finite) if finite else None,
            "participants": len(self.prepared.fleet), "hosts": len(self.hosts.actors),
            "wall_s": time.time() - self.started, "history": history,
        }

    def write_summary(self, status: str) -> None:
        path = self.run_dir / "summary.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_nan_to_none(self.summary(status)), indent=2, allow_nan=False))
        tmp.replace(path)


def _last_tasks(consumed: dict[int, int], prepared: Prepared) -> dict[int, int]:
    """Every participant's last aggregated task (-1: none yet), whose resulting state a checkpoint keeps."""
    return {p.id: consumed.get(p.id, -1) for p in prepared.fleet.participants}


def _none_to_nan(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry read back from summary.json: its nulls (rounds without an evaluation) are NaN again."""
    return {k: math.nan if v is None else v for k, v in entry.items()}


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: rounds without an evaluation are written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
