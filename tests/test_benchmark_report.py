"""benchmarks.common.report: the one way a benchmark closes (results under their command and machine, tables
printed for docs/benchmarks.md, the file's path)."""

from __future__ import annotations

import json

import benchmarks.common as common


def test_report_writes_command_machine_and_results_and_prints_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    monkeypatch.setattr(common, "machine", lambda: {"cpu": "test cpu"})
    rows = [{"size": 10, "ratio": 0.5}]

    path = common.report("demo", {"args": {"repeats": 3}, "medians": rows}, {"steady": rows, "start-up": []},
                         command="bench --repeats 3", footer="load 0.1-0.2; ")

    written = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name.startswith("demo-")
    assert written == {"command": "bench --repeats 3", "machine": {"cpu": "test cpu"}, "args": {"repeats": 3},
                       "medians": rows}
    out = capsys.readouterr().out
    assert "\nsteady\n\n| size | ratio |\n|---|---|\n| 10 | 0.5 |\n" in out
    assert out.endswith(f"load 0.1-0.2; results: {path}\n")


def test_report_of_one_table_takes_the_command_line_and_the_given_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    monkeypatch.setattr(common.sys, "argv", ["benchmarks/x.py", "--fast"])

    path = common.report("one", {}, [{"a": 1}], machine_info={"gpu": "none"})

    assert json.loads(path.read_text()) == {"command": "benchmarks/x.py --fast", "machine": {"gpu": "none"}}
    assert capsys.readouterr().out == f"| a |\n|---|\n| 1 |\nresults: {path}\n"
