"""The decision on the first screen of a comparison's report: the recommendation and one line per objective, then
the figures (the Pareto front of the final metric against each cost, the device time to the target with its
intervals, what each device class paid) and the tables; all drawn from the records, so `report DIR` redraws them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.decision import (Decision, class_markdown, context_lines, decide_from, final_outcomes,  # noqa: E402
                               pareto_lines, read_compare_record, statistics_table)
from analysis.decision_stats import Objective  # noqa: E402
from analysis.decision_text import SCALES, verdict_line  # noqa: E402
from analysis.runs import RunRecords  # noqa: E402

AXIS_UNITS = {"s": "device s", "J": "J", "MB": "MB", "GFLOP": "GFLOP", "share": "share of the cap (%)"}


def _scale(unit: str) -> float:
    return 100.0 if unit == "share" else 1.0 / SCALES.get(unit, 1.0)


def _points(decision: Decision, key: str) -> dict[str, tuple[float, float, float, dict[int, float]]]:
    """Per ranked scheme on objective `key`: mean, interval bounds, per-seed values."""
    rows = decision.statistics[(decision.statistics["objective"] == key) & (decision.statistics["with_value"] > 0)]
    return {r.scheme: (r.mean, r.low, r.high, r.values) for r in rows.itertuples()}


def figure_pareto(decision: Decision) -> Figure:
    """One panel per cost: every scheme's seeds (dots) and mean with its 95 % intervals on both axes; the schemes
    on the front joined by a dashed line. The metric's axis spans the seeds' values (an interval may run off it)."""
    quality, costs = decision.verdicts[0].objective, [v.objective for v in decision.verdicts[1:]]
    columns = min(3, len(costs))
    rows = -(-len(costs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.9 * rows + 0.8), squeeze=False)
    finals = _points(decision, quality.key)
    colours = {scheme: plt.cm.tab10(i % 10) for i, scheme in enumerate(finals)}
    seeds_values = [v for _, _, _, values in finals.values() for v in values.values()]
    for ax, cost in zip(axes.flat, costs):
        scale, spent = _scale(cost.unit), _points(decision, cost.key)
        for scheme, (mean, low, high, values) in spent.items():
            if scheme not in finals:
                continue
            q_mean, q_low, q_high, q_values = finals[scheme]
            seeds = sorted(set(values) & set(q_values))
            ax.scatter([values[s] * scale for s in seeds], [q_values[s] for s in seeds], s=12, alpha=0.4,
                       color=colours[scheme])
            ax.errorbar(mean * scale, q_mean, xerr=_err(mean, low, high, scale), yerr=_err(q_mean, q_low, q_high, 1.0),
                        fmt="o", color=colours[scheme], capsize=3, label=scheme)
        front = decision.pareto.get(cost.key, [])
        if len(front) > 1:
            ax.plot([spent[s][0] * scale for s in front], [finals[s][0] for s in front], "--", color="gray", lw=1)
        if seeds_values:
            pad = 0.1 * (max(seeds_values) - min(seeds_values)) or 0.05
            ax.set_ylim(min(seeds_values) - pad, max(seeds_values) + pad)
        ax.set(xlabel=AXIS_UNITS.get(cost.unit, cost.unit), ylabel=quality.title.lower(), title=_wrap(cost.title))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(costs):]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False)
    fig.suptitle(f"{quality.title} against each cost (dots: seeds; bars: 95 % intervals; dashed: the Pareto front)")
    fig.tight_layout(rect=(0, 0.06 * (1 + len(labels) // 4) / rows, 1, 1))
    return fig


def _err(mean: float, low: float, high: float, scale: float) -> list[list[float]] | None:
    if np.isnan(low):
        return None
    return [[(mean - low) * scale], [(high - mean) * scale]]


def _wrap(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) >= width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def figure_time_to_target(decision: Decision) -> Figure | None:
    """The device time (and energy) to the target per scheme: the mean over the seeds that reached it, its 95 %
    interval, each seed a dot; how many seeds reached it beside each bar."""
    targets = [v.objective for v in decision.verdicts if v.objective.key.endswith("to_target")]
    if not targets:
        return None
    schemes = list(dict.fromkeys(decision.statistics["scheme"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(6.0 * len(targets), 0.5 * len(schemes) + 1.8), squeeze=False)
    for ax, objective in zip(axes[0], targets):
        _bars(ax, decision, objective, schemes)
    fig.tight_layout()
    return fig


def _bars(ax: plt.Axes, decision: Decision, objective: Objective, schemes: list[str]) -> None:
    rows = decision.statistics[decision.statistics["objective"] == objective.key].set_index("scheme")
    scale = _scale(objective.unit)
    for index, scheme in enumerate(schemes):
        if scheme not in rows.index:
            continue
        row = rows.loc[scheme]
        if not row["with_value"]:
            ax.text(0, index, "  not reached", va="center", fontsize=8, color="gray")
            continue
        ax.barh(index, row["mean"] * scale, xerr=_err(row["mean"], row["low"], row["high"], scale), capsize=3,
                color="tab:blue" if row["with_value"] == row["seeds"] else "lightsteelblue")
        ax.scatter([v * scale for v in row["values"].values()], [index] * len(row["values"]), color="black", s=10,
                   zorder=3)
        ax.text(row["mean"] * scale, index + 0.3, f" {row['with_value']}/{row['seeds']} seeds", fontsize=7)
    ax.set_yticks(range(len(schemes)), schemes, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=AXIS_UNITS.get(objective.unit, objective.unit), title=objective.title)
    ax.grid(alpha=0.3, axis="x")


def figure_classes(decision: Decision) -> Figure | None:
    """What one device of each class paid per scheme: device time (and energy), mean over the seeds with its 95 %
    interval."""
    table = decision.per_class
    if not len(table):
        return None
    figures = [("device_s", "device s per device")] + ([("energy", "J per device")] if decision.energy else [])
    devices = list(dict.fromkeys(table["device"] + np.where(table["role"] == "participant", "",
                                                             " (" + table["role"] + ")")))
    schemes = list(dict.fromkeys(table["scheme"]))
    fig, axes = plt.subplots(1, len(figures), figsize=(max(6.0, 1.2 * len(devices) * len(schemes) / 2) * len(figures),
                                                       4.6), squeeze=False)
    width = 0.8 / len(schemes)
    for ax, (key, label) in zip(axes[0], figures):
        for s_index, scheme in enumerate(schemes):
            rows = table[table["scheme"] == scheme]
            names = rows["device"] + np.where(rows["role"] == "participant", "", " (" + rows["role"] + ")")
            x = [devices.index(n) + s_index * width for n in names]
            errors = [[m - lo if not np.isnan(lo) else 0 for m, lo in zip(rows[key], rows[f"{key}_low"])],
                      [hi - m if not np.isnan(hi) else 0 for m, hi in zip(rows[key], rows[f"{key}_high"])]]
            ax.bar(x, rows[key], width, yerr=errors, capsize=2, label=scheme)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(devices))], devices, fontsize=8, rotation=20)
        ax.set(ylabel=label, title=f"What one device of each class paid: {label}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


FIGURES: list[tuple[str, str, Callable[[Decision], Figure | None]]] = [
    ("decision_pareto", "The final metric against each cost, per scheme (the Pareto fronts)", figure_pareto),
    ("decision_time_to_target", "Device time to the target per scheme, with 95 % intervals", figure_time_to_target),
    ("decision_device_classes", "What one device of each class paid, per scheme", figure_classes),
]


def _markdown_table_html(text: str) -> str:
    """A Markdown table as an HTML table (the decision's tables are written once, as Markdown)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return f"<p>{html.escape(text)}</p>"
    cells = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><tr>{head}</tr>{body}</table>"


def decision_sections(directory: Path, out_dir: Path,
                      figure_html: Callable[[str, str, Figure], str]) -> tuple[list[str], list[RunRecords]]:
    """The report's decision sections (the first screen: recommendation, one line per objective, what was left
    out; then the figures and tables), and the final runs, labelled by scheme, for the rest of the report."""
    record = read_compare_record(directory)
    outcomes = final_outcomes(directory, record)
    decision = decide_from(record, outcomes)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in decision.lines)
    weakest = "".join(f"<li>{html.escape(verdict_line(v))}</li>" for v in decision.class_verdicts)
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in decision.notes)
    target = f"test {decision.metric} {decision.target:g}" if decision.target is not None else "none"
    sections = [f"<h2>{html.escape(decision.recommendation)}</h2>",
                f"<p>Target: {html.escape(target)}. One line per objective:</p><ul>{lines}</ul>"]
    if weakest:
        sections.append(f"<p>The weakest devices ({html.escape(decision.weakest or '')}):</p><ul>{weakest}</ul>")
    if notes:
        sections.append(f"<p>Left out:</p><ul>{notes}</ul>")
    for stem, caption, draw in FIGURES:
        fig = draw(decision)
        if fig is not None:
            sections.append(figure_html(stem, caption, fig))
    fronts = "".join(f"<li>{html.escape(line[2:])}</li>" for line in pareto_lines(decision))
    sections += [f"<h2>Pareto fronts (means; cheapest first)</h2><ul>{fronts}</ul>",
                 "<h2>Per scheme: mean [95 % interval] (per seed)</h2>"
                 + _markdown_table_html(statistics_table(decision)),
                 "<h2>What one device of each class paid (mean over seeds)</h2>"
                 + _markdown_table_html(class_markdown(decision)),
                 "<h2>How this was decided</h2><ul>"
                 + "".join(f"<li>{html.escape(line)}</li>" for line in context_lines(record)) + "</ul>"]
    runs = []
    for outcome in outcomes:
        if outcome.run is not None:
            outcome.run.group = outcome.scheme
            runs.append(outcome.run)
    return sections, runs


def compare_config_text(directory: Path) -> str:
    return json.dumps(read_compare_record(directory), indent=2)
