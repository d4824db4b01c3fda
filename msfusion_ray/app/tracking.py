"""Optional experiment tracking: each round's row and the config, sent to MLflow or written as TensorBoard events.

Off by default (`runtime.tracking: mlflow` or `tensorboard` turns it on; msfusion_ray.experiment.checks says
whether the tracker is installed). The process that launched the run
follows the round records the driver writes (records/rounds/round-*.parquet, beside it on the same node) and
hands every new round to the tracker, so tracking needs nothing from the driver or the hosts and a run that stops
has tracked exactly the rounds it recorded. What was tracked is noted in the run directory (tracking.json), so a
resumed run continues the same MLflow run and does not send a round twice.

- mlflow: a run named after the run id in the experiment named after the config, in the store at
  `runtime.tracking_uri` (default `sqlite:///mlflow.db`, in the current directory); the config as parameters
  (dotted keys), every numeric field of a round row as a metric at step = round. Needs the `mlflow` extra.
- tensorboard: event files in `runtime.tracking_uri` (default RUN_DIR/tensorboard): the config as text, every
  numeric field as a scalar at step = round. Needs the `tensorboard` extra.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.files import write_text_atomic

STATE_FILE = "tracking.json"
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"


def flat_config(data: Any, prefix: str = "") -> dict[str, str]:
    """The config as dotted keys and text values (what trackers take as parameters)."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flat_config(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(data) if not isinstance(data, str) else data}


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a round row (a round without an evaluation has no accuracy: nothing is sent)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key == "round":
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class Tracker(ABC):
    @abstractmethod
    def log_round(self, round_idx: int, metrics: dict[str, float]) -> None:
        """One round's metrics."""

    def finish(self, status: str) -> None:
        """The run ended ("complete" or "failed")."""


class MlflowTracker(Tracker):
    def __init__(self, config: ExperimentConfig, run_id: str, state: dict[str, Any]):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.uri = config.runtime.tracking_uri or DEFAULT_MLFLOW_URI
        self.client = MlflowClient(tracking_uri=self.uri)
        if state.get("mlflow_run_id"):
            self.run_id = state["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(config.name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(config.name)
        run = self.client.create_run(experiment_id, run_name=run_id, tags={"msfusion_ray.run_id": run_id})
        self.run_id = state["mlflow_run_id"] = run.info.run_id
        params = [Param(key[:250], value[:6000]) for key, value in flat_config(config.to_dict()).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_round(self, round_idx: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, round_idx) for k, v in metrics.items()])

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "complete" else "FAILED")


class TensorBoardTracker(Tracker):
    def __init__(self, config: ExperimentConfig, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=config.runtime.tracking_uri or str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + config.to_yaml() + "\n```")

    def log_round(self, round_idx: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, round_idx)
        self.writer.flush()

    def finish(self, status: str) -> None:
        self.writer.close()


class RoundFollower:
    """Hands each round record that appears in a run directory to a tracker, once."""

    def __init__(self, tracker_kind: str, config: ExperimentConfig, run_dir: Path, run_id: str):
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_FILE
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.state.setdefault("rounds", 0)
        if tracker_kind == "mlflow":
            self.tracker: Tracker = MlflowTracker(config, run_id, self.state)
        else:
            self.tracker = TensorBoardTracker(config, self.run_dir)
        self._save()

    def poll(self) -> int:
        """Track the rounds recorded since the last call; returns how many."""
        paths = sorted((self.run_dir / "records" / "rounds").glob("round-*.parquet"))
        new = [p for p in paths if int(p.stem.split("-")[1]) > self.state["rounds"]]
        # pandas here, where a tracker is set: imported at the top it cost the command line and the launcher's
        # preparing process 0.33 CPU seconds each on every run's start-up
        import pandas as pd

        for path in new:
            row = pd.read_parquet(path).iloc[0].to_dict()
            round_idx = int(row["round"])
            self.tracker.log_round(round_idx, numeric(row))
            self.state["rounds"] = round_idx
        if new:
            self._save()
        return len(new)

    def finish(self, status: str) -> None:
        self.poll()
        self.tracker.finish(status)

    def _save(self) -> None:
        write_text_atomic(self.state_path, json.dumps(self.state))


def follow_rounds(config: ExperimentConfig, run_dir: Path, run_id: str) -> RoundFollower | None:
    """The follower of a run's rounds for the tracker its config asks for (None: tracking is off)."""
    if config.runtime.tracking is None:
        return None
    return RoundFollower(config.runtime.tracking, config, run_dir, run_id)
