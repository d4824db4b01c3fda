"""The report of a run or a sweep: one self-contained HTML file (every plot inline as a base64 PNG, the tables, the
config; nothing fetched from anywhere) and the same plots as PNG files beside it."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from analysis import metrics
from analysis.comparison import comparison_table
from analysis.decision import is_compare_dir
from analysis.decision_report import compare_config_text, decision_sections
from analysis.plots import save_figure, standard_figures
from analysis.runs import RunRecords, is_sweep_dir, load_runs, load_sweep

STYLE = """body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}td{text-align:right}figure{margin:1em 0 2em}img{max-width:100%}
figcaption{font-size:13px;color:#555}pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}"""


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in reading units: bytes as MB, FLOPs as GFLOP, seconds marked (s), words spaced."""
    out = frame.copy()
    names = {}
    for column in frame.columns:
        name = column
        if "bytes" in column:
            out[column] = frame[column] / 1e6
            name = name.replace("bytes", "MB")
        elif "flops" in column:
            out[column] = frame[column] / 1e9
            name = name.replace("flops", "GFLOP")
        elif column.endswith("_s"):
            name = f"{name[:-2]} (s)"
        elif column.endswith("_j"):
            name = f"{name[:-2]} (J)"
        elif "energy" in column:
            name = f"{name} (J)"
        names[column] = re.sub(r"_+", " ", name).strip()
    return out.rename(columns=names)


def table_html(frame: pd.DataFrame) -> str:
    if not len(frame):
        return "<p>(none)</p>"
    return readable(frame).to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)


def cells_table(cells: dict[str, dict]) -> pd.DataFrame:
    """The sweep's cells as status.json records them, failed ones with their one-line error."""
    return pd.DataFrame([{"cell": cell_id, "status": cell["status"], "rounds": cell.get("rounds_completed"),
                          "final accuracy": cell.get("final_accuracy"),
                          "final perplexity": cell.get("final_perplexity"), "wall_s": cell.get("wall_s"),
                          "error": cell.get("error") or ""} for cell_id, cell in cells.items()])


def _figure_html(stem: str, caption: str, png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure id="{stem}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)} ({png.name})</figcaption></figure>")


def report_tables(runs: Sequence[RunRecords]) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) for every standard table; the tokens table only for language-model runs."""
    tables = [
        ("Comparison (per group, mean over seeds)", comparison_table(runs)),
        ("Runs", metrics.run_table(runs)),
        ("Scalability (per run)", metrics.scalability(runs)),
        ("Memory by device class", metrics.memory_by_device(runs)),
        ("Energy per participant by device class (J, mean over seeds)", metrics.energy_by_device(runs)),
        ("Outcomes and stragglers (participant-rounds)", metrics.outcomes(runs)),
    ]
    tokens = metrics.tokens_per_second(runs)
    if len(tokens):
        tables.append(("Tokens per second", tokens))
    return tables


def write_report(path: str | Path, out_dir: str | Path) -> Path:
    """Write out_dir/report.html and the PNGs of a run directory or a sweep directory; returns the HTML path."""
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    if is_compare_dir(path):
        sections, runs = decision_sections(path, out_dir, lambda stem, caption, fig: _figure_html(
            stem, caption, save_figure(fig, out_dir / f"{stem}.png")))
        title, config_text = f"Which scheme for this fleet: {path.name}", compare_config_text(path)
    elif is_sweep_dir(path):
        sweep = load_sweep(path)
        runs, title = sweep.runs, f"Sweep {sweep.config.get('name', path.name)}"
        config_text = yaml.safe_dump(sweep.config, sort_keys=False)
        sections.append(f"<h2>Sweep cells</h2>{table_html(cells_table(sweep.cells))}")
    else:
        runs, title = load_runs(path), f"Run {path.name}"
        config_text = (path / "config.yaml").read_text()
    runs = [r for r in runs if len(r.rounds)]
    if runs:
        for stem, caption, fig in standard_figures(runs):
            sections.append(_figure_html(stem, caption, save_figure(fig, out_dir / f"{stem}.png")))
        sections += [f"<h2>{html.escape(name)}</h2>{table_html(frame)}" for name, frame in report_tables(runs)]
    else:
        sections.append("<p>No run has written a round yet: nothing to plot.</p>")
    sections.append(f"<h2>Config</h2><pre>{html.escape(config_text)}</pre>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(runs)} run(s) with records, from {html.escape(str(path))}.</p>{''.join(sections)}</body></html>")
    report = out_dir / "report.html"
    report.write_text(page)
    return report
