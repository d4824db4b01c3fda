"""Figures of one or more runs, built only from their record files (through analysis.metrics).

Every figure has a title, axes labelled with units (GFLOP, MB, s) and a legend. Runs that repeat an experiment
with other seeds are drawn as one line (their mean) with a band from their minimum to their maximum.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis import metrics, timeline  # noqa: E402
from analysis.runs import RunRecords, label_runs, load_run  # noqa: E402

GFLOP, MB = 1e9, 1e6
METRIC_LABELS = {"accuracy": "test accuracy", "perplexity": "test perplexity"}
COST_AXES = (
    ("cum_flops_per_participant", "cumulative GFLOP per participant", 1 / GFLOP),
    ("cum_bytes_per_participant", "cumulative MB per participant (down + up)", 1 / MB),
    ("cum_device_s", "virtual time (s)", 1.0),
    ("cum_wall_s", "cumulative wall time (s)", 1.0),
    ("cum_energy_per_participant", "cumulative energy per participant (J)", 1.0),
)
OUTCOME_COLOURS = {"ok": "tab:green", "oom": "tab:red", "timeout": "tab:orange", "error": "tab:purple",
                   "unavailable": "tab:gray"}
PHASE_COLOURS = {"setup": "tab:blue", "train": "tab:green", "serialise": "tab:orange", "other": "tab:purple",
                 "idle": "lightgray", "compute_s": "tab:green", "communicate_s": "tab:blue", "wait_s": "lightgray"}
MAX_TIMELINE_ROWS = 40


def _band(ax: plt.Axes, spread, x_scale: float = 1.0) -> None:  # noqa: ANN001 (a seed_spread frame)
    """One line per group (mean over its seeds) and a min-max band where it has more than one run; more groups
    than the default ten colours take twenty."""
    if spread["group"].nunique() > 10:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for group, frame in spread.groupby("group", sort=False):
        runs = int(frame["runs"].max())
        label = group if runs == 1 else f"{group} (mean of {runs} seeds, band: min-max)"
        (line,) = ax.plot(frame["x"] * x_scale, frame["mean"], marker="o", markersize=3, label=label)
        if runs > 1:
            ax.fill_between(frame["x"] * x_scale, frame["min"], frame["max"], color=line.get_color(), alpha=0.2)


def _finish(fig: Figure, title: str) -> Figure:
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _legend_below(fig: Figure, ax: plt.Axes, title: str) -> Figure:
    """The groups' legend under the panels, in as many columns as fit (long scheme names stay readable)."""
    handles, labels = ax.get_legend_handles_labels()
    columns = 1 if max((len(label) for label in labels), default=0) > 60 else min(3, len(labels))
    rows = math.ceil(len(labels) / max(columns, 1))
    fig.suptitle(title)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, min(0.6, (0.15 * rows + 0.15) / fig.get_figheight()), 1, 1))
    return fig


def _log_if_spread(ax: plt.Axes, spread, scale: float) -> None:  # noqa: ANN001 (a seed_spread frame)
    """A logarithmic x axis where the groups' totals differ by more than 30x (an upper bound beside small
    sub-models would otherwise squash every other curve against the axis)."""
    ends = (spread.groupby("group", sort=False)["x"].max() * scale)
    ends = ends[ends > 0]
    if len(ends) > 1 and ends.max() / ends.min() > 30:
        ax.set_xscale("log")


def figure_metric_per_round(runs: Sequence[RunRecords]) -> Figure:
    metric = metrics.metric_of(runs)
    spread = metrics.seed_spread(runs, "round", metric)
    groups = spread["group"].nunique()
    fig, ax = plt.subplots(figsize=(6.4, 4.2 + (0.16 * groups if groups > 4 else 0)))
    _band(ax, spread)
    ax.set(xlabel="round", ylabel=METRIC_LABELS[metric])
    ax.grid(alpha=0.3)
    if groups > 4:
        return _legend_below(fig, ax, f"{METRIC_LABELS[metric].capitalize()} per round")
    ax.set_title(f"{METRIC_LABELS[metric].capitalize()} per round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure_metric_vs_cost(runs: Sequence[RunRecords]) -> Figure:
    metric = metrics.metric_of(runs)
    label = METRIC_LABELS[metric]
    groups = len({run.label for run in runs})
    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(4.6 * len(COST_AXES), 4.2 + 0.16 * groups), sharey=True)
    for ax, (cost, cost_label, scale) in zip(axes, COST_AXES):
        spread = metrics.seed_spread(runs, cost, metric)
        _band(ax, spread, scale)
        _log_if_spread(ax, spread, scale)
        ax.set(xlabel=cost_label, title=f"vs {cost_label.removeprefix('cumulative ').split(' (')[0]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    return _legend_below(fig, axes[0], f"{label.capitalize()} against cumulative cost per participant")


SCALABILITY_PANELS = (
    (("flops_per_participant",), "GFLOP per participant-round", 1 / GFLOP, "training compute"),
    (("bytes_per_participant",), "MB per participant-round (down + up)", 1 / MB, "communication"),
    (("peak_tensor_bytes", "peak_rss_bytes"), "peak memory (MB)", 1 / MB, "peak memory of a participant"),
    (("wall_round_s",), "round wall time (s)", 1.0, "round wall time (median)"),
    (("device_round_s",), "round device time (s)", 1.0, "round device time (median)"),
    (("cohort",), "participants asked per round", 1.0, "round cohort (mean)"),
)


def figure_scalability(runs: Sequence[RunRecords]) -> Figure:
    spread = metrics.scalability_spread(metrics.scalability(runs))
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    sizes = spread["participants"]
    wide = len(sizes) > 0 and sizes.max() >= 10 * sizes.min()
    for ax, (columns, ylabel, scale, title) in zip(axes.flat, SCALABILITY_PANELS):
        for (group, frame), colour in zip(spread.groupby("group", sort=False), plt.rcParams["axes.prop_cycle"]):
            for column, style in zip(columns, ("-", "--")):
                x = frame["participants"]
                name = f"{group}" if len(columns) == 1 else f"{group}, {column.split('_')[1]}"
                ax.plot(x, frame[f"{column}_mean"] * scale, style, marker="o", markersize=4, color=colour["color"],
                        label=name)
                if frame["runs"].max() > 1:
                    ax.fill_between(x, frame[f"{column}_min"] * scale, frame[f"{column}_max"] * scale,
                                    color=colour["color"], alpha=0.15)
        if wide:
            ax.set_xscale("log")
        ax.set(title=title, xlabel="participants in the fleet", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(fig, "Scalability: cost per participant and round time against fleet size")


def figure_timeline(run: RunRecords, round_idx: int | None = None) -> Figure | None:
    """One round of one run: per participant on the virtual clock, per host actor in wall time."""
    round_idx = round_idx if round_idx is not None else metrics.last_trained_round(run)
    if round_idx is None:
        return None
    device = metrics.device_timeline(run, round_idx).head(MAX_TIMELINE_ROWS)
    hosts = metrics.host_timeline(run, round_idx)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.22 * len(device) + 1.5)))
    start = 0.0
    for column, label in (("compute_s", "train (compute)"), ("communicate_s", "communicate"),
                          ("wait_s", "wait for the slowest")):
        left.barh(device["participant"].astype(str), device[column], left=start, color=PHASE_COLOURS[column],
                  label=label)
        start = start + device[column]
    shown = "" if len(device) == len(metrics.device_timeline(run, round_idx)) else f" (first {len(device)})"
    left.set(title=f"Device time per participant{shown}", xlabel="device time (s)", ylabel="participant")
    for phase, frame in hosts.groupby("phase", sort=False):
        right.barh(frame["host"].astype(str), frame["duration_s"], left=frame["start_s"], color=PHASE_COLOURS[phase],
                   edgecolor="white", linewidth=0.3, label=phase)
    right.set(title="Wall time per host actor (participants one after another)", xlabel="wall time (s)",
              ylabel="host actor")
    for ax in (left, right):
        ax.invert_yaxis()
        ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: bars stay clear
    return _finish(fig, f"Round {round_idx} of {run.cell or run.run_dir.name} ({run.label})")


def figure_memory(runs: Sequence[RunRecords]) -> Figure:
    table = metrics.memory_by_device(runs)
    groups = list(dict.fromkeys(table["group"])) or ["(no records)"]
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    measures = (("planned_bytes", "planned footprint"), ("peak_tensor_bytes", "peak live tensors"),
                ("peak_rss_bytes", "peak RSS rise of the host process"))
    for ax, group in zip(axes.flat, groups):
        frame = table[table["group"] == group].reset_index(drop=True)
        width = 0.8 / len(measures)
        for k, (column, label) in enumerate(measures):
            ax.bar(frame.index + (k - 1) * width, frame[column].fillna(0) / MB, width, label=label)
        ax.hlines(frame["cap_bytes"] / MB, frame.index - 0.45, frame.index + 0.45, colors="black", linewidth=2,
                  label="memory cap")
        ax.set_xticks(frame.index, frame["device"], rotation=20, ha="right", fontsize=8)
        ax.set(title=group, ylabel="memory (MB)", xlabel="device class")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    return _finish(fig, "Memory used against each device class's cap (largest per class)")


def figure_outcomes(runs: Sequence[RunRecords], straggler_factor: float = 2.0) -> Figure:
    table = metrics.outcomes(runs, straggler_factor)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.45 * len(table) + 1.6)))
    start = 0
    for outcome in metrics.OUTCOMES:
        left.barh(table["group"], table[outcome], left=start, color=OUTCOME_COLOURS[outcome], label=outcome)
        start = start + table[outcome]
    left.set(title="Participant-rounds by outcome", xlabel="participant-rounds (count)", ylabel="group")
    right.barh(table["group"], table["stragglers"], color="tab:brown",
               label=f"device time > {straggler_factor:g} x round median")
    right.set(title="Stragglers among trained participant-rounds", xlabel="participant-rounds (count)")
    for ax, most in ((left, table["participant_rounds"].max()), (right, table["stragglers"].max())):
        ax.set_xlim(0, 1.35 * max(most, 1))  # room on the right for the legend
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper right")
        ax.invert_yaxis()
    return _finish(fig, "Out-of-memory, failures, unavailability and stragglers")


def figure_tokens_per_second(runs: Sequence[RunRecords]) -> Figure | None:
    table = metrics.tokens_per_second(runs)
    if not len(table):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    devices = list(dict.fromkeys(table["device"]))
    groups = list(dict.fromkeys(table["group"]))
    width = 0.8 / len(groups)
    for k, group in enumerate(groups):
        frame = table[table["group"] == group].set_index("device").reindex(devices)
        ax.bar([i + k * width for i in range(len(devices))], frame["tokens_per_s"].fillna(0), width, label=group)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(devices))], devices, rotation=20, ha="right")
    ax.set(title="Training throughput on the emulating hosts", xlabel="device class", ylabel="tokens per second")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def timeline_runs(runs: Sequence[RunRecords], most: int = 4) -> list[RunRecords]:
    """One run per group (its first), the first `most` groups: whose rounds the timelines show."""
    chosen: dict[str, RunRecords] = {}
    for run in runs:
        if len(chosen) < most and run.label not in chosen and metrics.last_trained_round(run) is not None:
            chosen[run.label] = run
    return list(chosen.values())


def standard_figures(runs: Sequence[RunRecords]) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every standard plot the runs allow."""
    metric = metrics.metric_of(runs)
    figures = [
        (f"{metric}_per_round", f"{METRIC_LABELS[metric].capitalize()} per round.", figure_metric_per_round(runs)),
        (f"{metric}_vs_cost", f"{METRIC_LABELS[metric].capitalize()} against cumulative FLOPs, bytes and energy per "
                              "participant (fleet totals over the fleet size), virtual time and wall time.",
         figure_metric_vs_cost(runs)),
        ("scalability", "Per-participant cost, peak memory and round times against the number of participants.",
         figure_scalability(runs)),
    ]
    for k, run in enumerate(timeline_runs(runs)):
        figures.append((f"timeline_{k + 1}", f"A round of {run.cell or run.run_dir.name}: device time per "
                                             "participant and wall time per host actor.", figure_timeline(run)))
        virtual = timeline.figure_virtual_timeline(run)
        if virtual is not None:
            figures.append((f"virtual_timeline_{k + 1}", f"The virtual clock of {run.cell or run.run_dir.name}: "
                            "what each device did, and when the global model changed.", virtual))
    staleness = timeline.figure_staleness(runs)
    if staleness is not None:
        figures.append(("staleness", "Staleness of the aggregated updates.", staleness))
    figures += [
        ("memory", "Planned and measured memory against each device class's cap.", figure_memory(runs)),
        ("outcomes", "Outcomes of every participant-round, and stragglers.", figure_outcomes(runs)),
    ]
    tokens = figure_tokens_per_second(runs)
    if tokens is not None:
        figures.append(("tokens_per_second", "Tokens per second of training, per device class.", tokens))
    return figures


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """The standard plots for a set of runs, as PNG files in `out_dir`."""
    runs = label_runs([load_run(d) for d in run_dirs])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_figure(fig, out_dir / f"{stem}.png") for stem, _, fig in standard_figures(runs)]
