"""Hand-made records: small enough that every aggregate can be worked out by hand in the tests."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import yaml

from analysis.runs import RunRecords, label_runs
from msfusion_ray.records import ParticipantRoundRow, RecordWriter, RoundRow


def participant(round_idx: int, pid: int, status: str = "ok", **values) -> ParticipantRoundRow:
    return ParticipantRoundRow(run_id="r", round=round_idx, participant=pid, device=values.pop("device", "pi"),
                               host=values.pop("host", 0), status=status, **values)


def make_run(strategy: str, seed: int, size: int, rounds: list[dict], rows: list[ParticipantRoundRow],
             run_dir: Path | None = None) -> RunRecords:
    """A run whose round rows carry `rounds` (flops_total, bytes, accuracy, times...) and whose participant rows
    are `rows`; written to `run_dir` as a real run would write it when one is given."""
    config = {"name": "fixture", "rounds": len(rounds), "seed": seed, "strategy": {"name": strategy},
              "fleet": {"size": size}}
    clock, round_rows = 0.0, []
    for k, values in enumerate(rounds):  # a synchronous run's timeline unless the round says otherwise
        values = {"vt_start": clock, "vt_end": clock + values.get("device_time_s", 0.0), **values}
        clock = values["vt_end"]
        round_rows.append(RoundRow(run_id="r", round=k + 1, strategy=strategy, **values))
    summary = {"strategy": strategy, "participants": size, "status": "complete"}
    if run_dir is not None:
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        (run_dir / "summary.json").write_text(json.dumps(summary))
        writer = RecordWriter(run_dir)
        for row in round_rows:
            writer.write_round([r for r in rows if r.round == row.round], row)
    participants = pd.DataFrame([asdict(r) for r in rows], columns=list(ParticipantRoundRow.__annotations__))
    return RunRecords(run_dir or Path(f"{strategy}-{seed}-{size}"), config, summary, participants,
                      pd.DataFrame([r.flat() for r in round_rows]))


def three_runs(root: Path | None = None) -> list[RunRecords]:
    """fedavg with seeds 0 and 1 on 2 participants, small_fedavg with seed 0 on 4 participants."""
    def where(name: str) -> Path | None:
        return root / name if root is not None else None

    a = make_run("fedavg", 0, 2, [
        dict(flops_total=100, bytes_down_total=10, bytes_up_total=10, device_time_s=2.0, wall_round_s=1.0,
             wall_eval_s=0.5, test_accuracy=0.5, participants_planned=2),
        dict(flops_total=200, bytes_down_total=20, bytes_up_total=20, device_time_s=3.0, wall_round_s=2.0,
             wall_eval_s=0.5, test_accuracy=0.7, participants_planned=2),
    ], [
        participant(1, 0, flops=60, bytes_down=5, bytes_up=5, device_time_s=2.0, device_compute_s=1.5,
                    device_comm_s=0.5, mem_cap_bytes=1000, mem_planned_bytes=600, mem_peak_tensor_bytes=500,
                    mem_peak_rss_bytes=700, wall_setup_s=0.1, wall_train_s=0.3, wall_serialize_s=0.05,
                    wall_total_s=0.5),
        participant(1, 1, flops=40, bytes_down=5, bytes_up=5, device_time_s=1.0, device_compute_s=0.5,
                    device_comm_s=0.5, mem_cap_bytes=1000, mem_planned_bytes=600, mem_peak_tensor_bytes=450,
                    mem_peak_rss_bytes=200, wall_setup_s=0.1, wall_train_s=0.2, wall_serialize_s=0.1,
                    wall_total_s=0.4),
        participant(2, 0, flops=200, bytes_down=20, bytes_up=20, device_time_s=3.0, device_compute_s=2.0,
                    device_comm_s=1.0, mem_cap_bytes=1000, mem_planned_bytes=600, mem_peak_tensor_bytes=520,
                    mem_peak_rss_bytes=100, wall_setup_s=0.2, wall_train_s=0.6, wall_serialize_s=0.1,
                    wall_total_s=1.0),
        participant(2, 1, status="unavailable"),
    ], where("a"))
    b = make_run("fedavg", 1, 2, [
        dict(flops_total=100, bytes_down_total=10, bytes_up_total=10, device_time_s=1.0, wall_round_s=1.0,
             wall_eval_s=0.5, test_accuracy=0.3, participants_planned=1),
        dict(flops_total=300, bytes_down_total=10, bytes_up_total=10, device_time_s=1.0, wall_round_s=3.0,
             wall_eval_s=0.5, test_accuracy=0.8, participants_planned=2),
    ], [
        participant(1, 0, flops=100, bytes_down=10, bytes_up=10, device_time_s=1.0, mem_cap_bytes=1000,
                    mem_planned_bytes=600, mem_peak_tensor_bytes=510, mem_peak_rss_bytes=300),
        participant(1, 1, status="oom", device="phone", mem_cap_bytes=400, mem_planned_bytes=600),
        participant(2, 0, flops=150, bytes_down=5, bytes_up=5, device_time_s=1.0, mem_cap_bytes=1000,
                    mem_planned_bytes=600, mem_peak_tensor_bytes=505, mem_peak_rss_bytes=0),
        participant(2, 1, flops=150, bytes_down=5, bytes_up=5, device="phone", device_time_s=1.0,
                    mem_cap_bytes=400, mem_planned_bytes=300, mem_peak_tensor_bytes=250, mem_peak_rss_bytes=50),
    ], where("b"))
    # four participants; in round 1 one of them takes 5 s where the others take 1 s: a straggler
    c = make_run("small_fedavg", 0, 4, [
        dict(flops_total=80, bytes_down_total=8, bytes_up_total=8, device_time_s=5.0, wall_round_s=4.0,
             wall_eval_s=1.0, test_accuracy=0.4, participants_planned=4),
    ], [participant(1, pid, flops=20, bytes_down=2, bytes_up=2, device_time_s=5.0 if pid == 3 else 1.0,
                    host=pid % 2, mem_cap_bytes=1000, mem_planned_bytes=300, mem_peak_tensor_bytes=250,
                    mem_peak_rss_bytes=10, tokens=100 * (pid + 1), wall_train_s=1.0 + pid)
        for pid in range(4)], where("c"))
    return label_runs([a, b, c])


def write_sweep(root: Path) -> Path:
    """A sweep directory holding the three runs as cells, and a fourth cell that failed before any round."""
    runs = three_runs(root / "cells")
    cells = {run.run_dir.name: {"values": {"strategy.name": run.strategy, "seed": run.seed}, "status": "complete",
                                "error": None, "run_dir": f"cells/{run.run_dir.name}", "rounds_completed": 2,
                                "final_accuracy": 0.5, "wall_s": 3.0} for run in runs}
    cells["d"] = {"values": {"strategy.name": "fedavg", "seed": 2}, "status": "failed",
                  "error": "UserInputError: x: device profile directory not found", "run_dir": "cells/d"}
    (root / "sweep.yaml").write_text(yaml.safe_dump({"name": "fixture", "base": {"name": "fixture"},
                                                     "grid": {"seed": [0, 1]}}))
    (root / "status.json").write_text(json.dumps({"cells": cells}))
    return root
