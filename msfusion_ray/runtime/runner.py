"""The round loop a driver actor runs: plan, dispatch, aggregate, evaluate, record, checkpoint.

It never names an algorithm: the strategy plans and combines, the engine the strategy asks for moves the work.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from msfusion_ray.experiment import Prepared
from msfusion_ray.models.weights import Weights, load_weights, to_weights
from msfusion_ray.records import ParticipantRoundRow, RecordWriter, RoundRow
from msfusion_ray.runtime.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from msfusion_ray.runtime.engine import ENGINES
from msfusion_ray.runtime.hosts import HostPool
from msfusion_ray.data.arrays import ArrayDataset
from msfusion_ray.training.evaluate import evaluate, recalibrate_batchnorm


def initial_weights(prepared: Prepared) -> Weights:
    torch.manual_seed(prepared.config.seed)
    return to_weights(prepared.family.build())


def calibration_split(prepared: Prepared) -> ArrayDataset:
    """A seeded sample of training data on which the global model's BatchNorm statistics are recomputed."""
    train = prepared.data.train
    size = min(prepared.config.runtime.bn_calibration_samples, len(train))
    chosen = np.random.default_rng([prepared.config.seed, 0xB7]).choice(len(train), size, replace=False)
    return train.subset(np.sort(chosen))


class Runner:
    def __init__(self, prepared: Prepared, data_ref: ray.ObjectRef, run_dir: str | Path, run_id: str,
                 resume: bool = False):
        self.prepared = prepared
        self.config = prepared.config
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.writer = RecordWriter(self.run_dir)
        torch.set_num_threads(self.config.runtime.threads_per_host)
        self.hosts = HostPool(prepared, data_ref, run_id)
        self.devices = {p.id: p.device.name for p in prepared.fleet.participants}
        self.infos = {info.id: info for info in prepared.participant_infos()}
        self.weights = initial_weights(prepared)
        self.calibration = calibration_split(prepared)
        self.start_round = 1
        self.history: list[dict[str, float]] = []
        self.started = time.time()
        self.progress: dict[str, Any] = {"round": 0, "rounds": self.config.rounds, "status": "starting"}
        if resume:
            self._restore()

    def _restore(self) -> None:
        checkpoint = load_checkpoint(self.run_dir)
        if checkpoint is None:
            return
        self.weights = checkpoint.weights
        self.prepared.strategy.load_state_dict(checkpoint.strategy_values, checkpoint.strategy_arrays)
        self.hosts.import_states(checkpoint.participants, self.config.runtime.task_timeout_s)
        self.writer.discard_after(checkpoint.round)
        self.start_round = checkpoint.round + 1
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            history = json.loads(summary.read_text()).get("history", [])[: checkpoint.round]
            self.history = [_none_to_nan(entry) for entry in history]

    def cohort(self, round_idx: int) -> list[int]:
        """Participants asked to train this round: a seeded sample of the fleet."""
        n = len(self.prepared.fleet)
        k = max(1, round(self.config.fleet.sample_fraction * n))
        if k == n:
            return list(range(n))
        return sorted(np.random.default_rng([self.config.seed, round_idx, 0xC0]).choice(n, k, replace=False).tolist())

    def run(self) -> dict[str, Any]:
        try:
            for round_idx in range(self.start_round, self.config.rounds + 1):
                self.run_round(round_idx)
            self._write_summary("complete")
        except BaseException:
            self._write_summary("failed")
            raise
        finally:
            self.hosts.shutdown()
        return self.summary("complete")

    def run_round(self, round_idx: int) -> RoundRow:
        started = time.perf_counter()
        strategy = self.prepared.strategy
        available = self.prepared.fleet.available(round_idx)
        cohort = self.cohort(round_idx)
        absent = [self._absent_row(round_idx, pid) for pid in cohort if not available[pid]]
        present = [self.infos[pid] for pid in cohort if available[pid]]
        tasks = strategy.plan(round_idx, present, self.prepared.capacity)
        lr = self.config.training.lr * self.config.training.lr_decay ** (round_idx - 1)
        result = ENGINES[strategy.engine](round_idx, tasks, strategy, self.hosts, self.weights, lr,
                                          self.config.runtime.task_timeout_s, self.run_id, self.devices)
        self.weights = result.weights
        wall_round = time.perf_counter() - started
        evaluation, wall_eval = self._evaluate(round_idx)
        rows = sorted(result.rows + absent, key=lambda r: r.participant)
        metrics = {f"{split}_{name}": evaluation.get(split, {}).get(name, math.nan)
                   for split in ("test", "val") for name in ("accuracy", "loss", "perplexity")}
        round_row = RoundRow.summarise(self.run_id, round_idx, strategy.name, rows, wall_round_s=wall_round,
                                       wall_eval_s=wall_eval, strategy_metrics=result.metrics, **metrics)
        self.writer.write_round(rows, round_row)
        self.history.append({"round": round_idx, "accuracy": round_row.test_accuracy, "loss": round_row.test_loss,
                             "perplexity": round_row.test_perplexity, "val_perplexity": round_row.val_perplexity})
        if round_idx % self.config.runtime.checkpoint_every == 0 or round_idx == self.config.rounds:
            self._checkpoint(round_idx)
        self._write_summary("running")
        self.progress = {"round": round_idx, "rounds": self.config.rounds, "status": "running",
                         "accuracy": round_row.test_accuracy, "perplexity": round_row.test_perplexity,
                         "ok": round_row.participants_ok, "oom": round_row.participants_oom}
        return round_row

    def _absent_row(self, round_idx: int, pid: int) -> ParticipantRoundRow:
        return ParticipantRoundRow(run_id=self.run_id, round=round_idx, participant=pid, device=self.devices[pid],
                                   host=self.hosts.host_of[pid], status="unavailable")

    def _evaluate(self, round_idx: int) -> tuple[dict[str, dict[str, float]], float]:
        """The global model on the test split (and the validation split where the data set has one)."""
        if round_idx % self.config.runtime.eval_every and round_idx != self.config.rounds:
            return {}, 0.0
        started = time.perf_counter()
        model = self.prepared.family.build()
        load_weights(model, self.weights)
        data = self.prepared.data
        batch = self.config.runtime.eval_batch_size
        recalibrate_batchnorm(model, data, self.calibration, batch)
        splits = {"test": data.test, "val": data.validation}
        metrics = {name: evaluate(model, data, split, batch) for name, split in splits.items() if split is not None}
        return metrics, time.perf_counter() - started

    def _checkpoint(self, round_idx: int) -> None:
        values, arrays = self.prepared.strategy.state_dict()
        participants = self.hosts.export_states(self.config.runtime.task_timeout_s)
        save_checkpoint(self.run_dir, Checkpoint(round_idx, self.weights, values, arrays, participants))

    def summary(self, status: str) -> dict[str, Any]:
        finite = [h["accuracy"] for h in self.history if not math.isnan(h["accuracy"])]
        return {
            "run_id": self.run_id, "name": self.config.name, "strategy": self.prepared.strategy.name,
            "status": status, "rounds": self.config.rounds,
            "rounds_completed": self.history[-1]["round"] if self.history else 0,
            "final_accuracy": finite[-1] if finite else None, "best_accuracy": max(finite) if finite else None,
            "participants": len(self.prepared.fleet), "hosts": len(self.hosts.actors),
            "wall_s": time.time() - self.started, "history": self.history,
        }

    def _write_summary(self, status: str) -> None:
        path = self.run_dir / "summary.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_nan_to_none(self.summary(status)), indent=2, allow_nan=False))
        tmp.replace(path)


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
