"""Loading run directories and deriving the cost curves the plots and tables are made of."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from msfusion_ray.records import read_participant_rows, read_round_rows


@dataclass
class RunRecords:
    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    participants: pd.DataFrame
    rounds: pd.DataFrame

    @property
    def label(self) -> str:
        return str(self.summary.get("strategy") or self.config.get("strategy", {}).get("name") or self.run_dir.name)

    @property
    def fleet_size(self) -> int:
        if "participants" in self.summary:
            return int(self.summary["participants"])
        return int(self.participants["participant"].nunique())


def load_run(run_dir: str | Path) -> RunRecords:
    run_dir = Path(run_dir)
    config_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    config = yaml.safe_load(config_path.read_text())
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return RunRecords(run_dir, config, summary, read_participant_rows(run_dir), read_round_rows(run_dir))


def cost_curves(run: RunRecords) -> pd.DataFrame:
    """Per round: the metric, and cumulative cost per fleet member (FLOPs, bytes both ways, device seconds of the
    round's slowest participant, wall seconds). Per-member costs are totals divided by the fleet size."""
    rounds = run.rounds.sort_values("round")
    size = run.fleet_size
    curves = pd.DataFrame({
        "round": rounds["round"].to_numpy(),
        "accuracy": rounds["test_accuracy"].to_numpy(dtype=float),
        "perplexity": rounds["test_perplexity"].to_numpy(dtype=float),
        "cum_flops_per_participant": (rounds["flops_total"].cumsum() / size).to_numpy(dtype=float),
        "cum_bytes_per_participant": ((rounds["bytes_down_total"] + rounds["bytes_up_total"]).cumsum()
                                      / size).to_numpy(dtype=float),
        "cum_device_s": rounds["device_time_s"].cumsum().to_numpy(dtype=float),
        "cum_wall_s": (rounds["wall_round_s"] + rounds["wall_eval_s"]).cumsum().to_numpy(dtype=float),
    })
    return curves
