"""The report of a tuning protocol (`python -m msfusion_ray tune`): for each scheme the settings it was tuned over
with their validation values, the one that won and the runs it took; then the winners on the final seeds, on the
test split, as the comparison table.

    python -m analysis.tuning sweeps/fmnist-width-tuned --target 0.8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from analysis.comparison import SPLITS, comparison_table, markdown
from analysis.runs import RunRecords, load_sweep

TUNING_FILE = "tuning.json"  # what the protocol records (msfusion_ray.app.tuning writes it)


def read_tuning_record(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / TUNING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a tuning directory (no {TUNING_FILE})")
    return json.loads(path.read_text())


def setting_text(values: dict[str, Any]) -> str:
    """'lr=0.05, contrastive_weight=1': the last part of each tuned key."""
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items()) or "(defaults)"


def _score(value: float | None) -> str:
    return "failed" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def winners_table(record: dict[str, Any]) -> str:
    """Per scheme: the runs it was tuned with, every setting tried with its validation value, the winner."""
    select = record.get("select", "final")
    lines = [f"| scheme | tuning runs | settings tried (validation {select} value) | winner | winner's validation "
             f"value | final runs (seeds {', '.join(map(str, record['seeds']))}) |", "|---|---|---|---|---|---|"]
    for name, scheme in record["schemes"].items():
        tried = "; ".join(f"{setting_text(t['values'])}: {_score(t['score'])}" for t in scheme["trials"])
        lines.append(f"| {name} | {scheme['tuning_runs']} | {tried} | {setting_text(scheme['winner'])} | "
                     f"{_score(scheme['winner_score'])} | {scheme['final_runs']} |")
    return "\n".join(lines)


def final_runs(directory: str | Path, record: dict[str, Any]) -> list[RunRecords]:
    """The final sweep's runs, each labelled with its scheme's name."""
    scheme_of = {cell: name for name, scheme in record["schemes"].items() for cell in scheme["final_cells"]}
    runs = [run for run in load_sweep(Path(directory) / "final").runs if run.cell in scheme_of]
    for run in runs:
        run.group = scheme_of[run.cell]
    order = list(record["schemes"])
    return sorted(runs, key=lambda run: (order.index(run.group), run.seed))


def tuning_report(directory: str | Path, target: float | None = None, split: str = "test") -> str:
    record = read_tuning_record(directory)
    parts = [f"Tuning: {record['budget']} runs per scheme at most, on the validation split (seed "
             f"{record['tune_seed']}); the winners on seeds {', '.join(map(str, record['seeds']))}, on the test split.",
             "", winners_table(record)]
    if (Path(directory) / "final" / "status.json").is_file():
        runs = final_runs(directory, record)
        if runs:
            parts += ["", markdown(comparison_table(runs, target, split))]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="the tuning protocol's directory (output_dir/name)")
    parser.add_argument("--target", type=float, help="accuracy (or perplexity) whose device time to report")
    parser.add_argument("--target-split", choices=SPLITS, default="test")
    parser.add_argument("--plots", metavar="OUT", help="also draw the final runs' figures, labelled by scheme, here")
    args = parser.parse_args(argv)
    print(tuning_report(args.directory, args.target, args.target_split))
    if args.plots:
        from analysis.plots import figure_metric_per_round, figure_metric_vs_cost, save_figure

        runs = final_runs(args.directory, read_tuning_record(args.directory))
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        figures = {"accuracy_per_round": figure_metric_per_round, "accuracy_vs_cost": figure_metric_vs_cost}
        for stem, figure in figures.items():
            print(save_figure(figure(runs), out / f"{stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
