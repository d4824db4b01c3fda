"""Every figure explains itself, and the report holds every plot and table (hand-made records, no Ray)."""

import re

from analysis.plots import standard_figures
from analysis.report import write_report
from msfusion_ray.cli import main
from tests.analysis.fixtures import three_runs, write_sweep

FIGURES = ("accuracy_per_round", "accuracy_vs_cost", "scalability", "timeline_1", "timeline_2", "memory",
           "outcomes", "tokens_per_second")
TABLES = ("Sweep cells", "Comparison (per group, mean over seeds)", "Runs", "Scalability (per run)",
          "Memory by device class", "Energy per participant by device class (J, mean over seeds)",
          "Outcomes and stragglers (participant-rounds)", "Tokens per second", "Config")


def test_every_figure_is_titled_labelled_and_has_a_legend():
    figures = standard_figures(three_runs())
    assert [stem for stem, _, _ in figures] == list(FIGURES)
    for stem, _, fig in figures:
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        assert axes, stem
        assert fig.legends or any(ax.get_legend() is not None for ax in axes), f"{stem}: no legend"
        for ax in axes:
            assert ax.get_title() or fig._suptitle is not None, f"{stem}: untitled axes"
            assert ax.get_xlabel() and (ax.get_ylabel() or ax is not axes[0]), f"{stem}: unlabelled axes"
    units = " ".join(ax.get_xlabel() + " " + ax.get_ylabel() for _, _, fig in figures for ax in fig.axes)
    for unit in ("GFLOP", "MB", "(s)"):
        assert unit in units


def test_sweep_report_holds_every_plot_table_failed_cell_and_the_config(tmp_path):
    sweep_dir = write_sweep(tmp_path / "sweep")
    report = write_report(sweep_dir, tmp_path / "out")
    page = report.read_text()
    for stem in FIGURES:
        assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 5000
        assert re.search(rf'<figure id="{stem}"><img alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]{{2000,}}"',
                         page), stem
    for title in TABLES:
        assert f"<h2>{title}</h2>" in page
    assert "device profile directory not found" in page  # the failed cell's one-line error
    assert "small_fedavg" in page and "<pre>" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched


def test_report_command_on_a_run_and_on_bad_input(tmp_path, capsys):
    three_runs(tmp_path)
    assert main(["report", str(tmp_path / "a")]) == 0
    page = (tmp_path / "a" / "report" / "report.html").read_text()
    assert "Tokens per second" not in page and '<figure id="timeline_1">' in page
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a run directory" in err and err.count("\n") == 1

