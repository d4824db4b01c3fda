"""Plots of one or more runs, built only from their record files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)

from analysis.runs import RunRecords, cost_curves, load_run  # noqa: E402

COST_AXES = (
    ("cum_flops_per_participant", "cumulative FLOPs per participant"),
    ("cum_bytes_per_participant", "cumulative bytes per participant"),
    ("cum_device_s", "cumulative device time (s)"),
)


def _metric(runs: Sequence[RunRecords]) -> tuple[str, str]:
    uses_perplexity = any(r.rounds["test_perplexity"].notna().any() for r in runs if "test_perplexity" in r.rounds)
    return ("perplexity", "test perplexity") if uses_perplexity else ("accuracy", "test accuracy")


def plot_metric_per_round(runs: Sequence[RunRecords], out: Path) -> Path:
    column, label = _metric(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        curve = cost_curves(run).dropna(subset=[column])
        ax.plot(curve["round"], curve[column], marker="o", markersize=3, label=run.label)
    ax.set(title=f"{label.capitalize()} per round", xlabel="round", ylabel=label)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_metric_vs_cost(runs: Sequence[RunRecords], out: Path) -> Path:
    column, label = _metric(runs)
    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(5.0 * len(COST_AXES), 4.2), sharey=True)
    for ax, (cost, cost_label) in zip(axes, COST_AXES):
        for run in runs:
            curve = cost_curves(run).dropna(subset=[column])
            ax.plot(curve[cost], curve[column], marker="o", markersize=3, label=run.label)
        ax.set(xlabel=cost_label, title=f"{label} vs {cost_label.split(' (')[0].replace('cumulative ', '')}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """The standard plots for a set of runs, as PNG files in `out_dir`."""
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = _metric(runs)[0]
    return [plot_metric_per_round(runs, out_dir / f"{metric}_per_round.png"),
            plot_metric_vs_cost(runs, out_dir / f"{metric}_vs_cost.png")]
