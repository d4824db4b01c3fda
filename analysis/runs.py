"""Loading run and sweep directories, naming the runs, and deriving the cost curves plots and tables are made of."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from msfusion_ray.inputs import load_json, load_yaml
from msfusion_ray.records import read_participant_rows, read_round_rows

# Config keys that never make two runs different experiments (where they are, what they are called, how long the
# run went on: a longer run of an experiment repeats its rounds).
NOT_EXPERIMENT_KEYS = ("name", "output_dir", "data.data_dir", "runtime.address", "runtime.host_cpus", "rounds")


@dataclass
class RunRecords:
    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    participants: pd.DataFrame
    rounds: pd.DataFrame
    group: str = ""  # the experiment it repeats (same config but the seed); set by `label_runs`
    cell: str = ""  # its sweep cell, if it is one

    @property
    def label(self) -> str:
        return self.group or self.strategy

    @property
    def strategy(self) -> str:
        return str(self.summary.get("strategy") or self.config.get("strategy", {}).get("name") or self.run_dir.name)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def fleet_size(self) -> int:
        if "participants" in self.summary:
            return int(self.summary["participants"])
        return int(self.participants["participant"].nunique())


@dataclass
class SweepRecords:
    """A sweep directory: its recorded sweep config, each cell's status, and the runs its cells left."""

    directory: Path
    config: dict[str, Any]
    cells: dict[str, dict[str, Any]]
    runs: list[RunRecords] = field(default_factory=list)


def load_run(run_dir: str | Path) -> RunRecords:
    run_dir = Path(run_dir)
    config_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_yaml(config_path)
    summary = load_json(summary_path) if summary_path.is_file() else {}
    return RunRecords(run_dir, config, summary, read_participant_rows(run_dir), read_round_rows(run_dir))


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / "sweep.yaml").is_file() and (Path(path) / "status.json").is_file()


def load_sweep(directory: str | Path) -> SweepRecords:
    """The sweep and every cell that wrote at least one round (a failed cell may have some)."""
    directory = Path(directory)
    config = load_yaml(directory / "sweep.yaml")
    cells = load_json(directory / "status.json").get("cells", {})
    runs = []
    for cell_id, cell in cells.items():
        run_dir = directory / cell.get("run_dir", f"cells/{cell_id}")
        if (run_dir / "config.yaml").is_file() and (run_dir / "records" / "rounds").is_dir():
            run = load_run(run_dir)
            run.cell = cell_id
            runs.append(run)
    return SweepRecords(directory, config, cells, label_runs(runs))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted key: value}: lists stay whole, an empty mapping adds nothing (`params: {}` says no
    more than leaving `params` out)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def varying_keys(runs: Sequence[RunRecords]) -> list[str]:
    """Config keys whose values differ between the runs (the experiment's factors), in config order."""
    flats = [flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    return [k for k in keys if k not in NOT_EXPERIMENT_KEYS
            and len({json.dumps(flat.get(k), sort_keys=True, default=str) for flat in flats}) > 1]


def describe(flat: dict[str, Any], keys: Sequence[str]) -> str:
    """'size=100, lr=0.1': short key=value for each key the config sets (the last part of the key; a file path by
    its stem). A key the config leaves out has its default, which the run beside it changed: it is not named."""
    parts = []
    for key in keys:
        if key not in flat:
            continue
        value = flat[key]
        if isinstance(value, str) and "/" in value:
            value = Path(value).stem
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts)


def group_names(runs: Sequence[RunRecords], besides: Sequence[str] = ()) -> list[str]:
    """Each run's group: its strategy, then the other factors that vary between the runs, except the seed (runs
    that differ only by seed repeat one experiment) and `besides`."""
    keys = [k for k in varying_keys(runs) if k not in ("seed", "strategy.name", *besides)]
    return [", ".join(filter(None, [run.strategy, describe(flatten(run.config), keys)])) for run in runs]


def label_runs(runs: list[RunRecords]) -> list[RunRecords]:
    for run, name in zip(runs, group_names(runs)):
        run.group = name
    return runs


def load_runs(path: str | Path) -> list[RunRecords]:
    """The runs of a run directory or of a sweep directory, labelled."""
    if is_sweep_dir(path):
        return load_sweep(path).runs
    return label_runs([load_run(path)])


def cost_curves(run: RunRecords) -> pd.DataFrame:
    """Per round: the metric on the test split (and on the validation split, `val_` columns, NaN without one), and
    cumulative cost per fleet member (FLOPs, bytes both ways, wall seconds of the round and its evaluation), and the
    virtual time of the round's aggregation (`cum_device_s`: the run's virtual clock; for records written before
    the timeline, the sum of the rounds' slowest device times), and the joules every task spent
    (`cum_energy_per_participant`, NaN for records written before energy was). Per-member costs are totals divided
    by the fleet size."""
    rounds = run.rounds.sort_values("round")
    size = run.fleet_size
    curves = pd.DataFrame({
        "round": rounds["round"].to_numpy(),
        "accuracy": rounds["test_accuracy"].to_numpy(dtype=float),
        "perplexity": rounds["test_perplexity"].to_numpy(dtype=float),
        "val_accuracy": rounds["val_accuracy"].to_numpy(dtype=float),  # NaN where the data has no validation split
        "val_perplexity": rounds["val_perplexity"].to_numpy(dtype=float),
        "cum_flops_per_participant": (rounds["flops_total"].cumsum() / size).to_numpy(dtype=float),
        "cum_bytes_per_participant": ((rounds["bytes_down_total"] + rounds["bytes_up_total"]).cumsum()
                                      / size).to_numpy(dtype=float),
        "cum_device_s": (rounds["vt_end"] if "vt_end" in rounds else rounds["device_time_s"].cumsum()
                         ).to_numpy(dtype=float),
        "cum_wall_s": (rounds["wall_round_s"] + rounds["wall_eval_s"]).cumsum().to_numpy(dtype=float),
        "cum_energy_per_participant": (rounds["energy_j_total"].cumsum(skipna=False) / size).to_numpy(dtype=float)
        if "energy_j_total" in rounds else np.full(len(rounds), np.nan),
    })
    return curves
