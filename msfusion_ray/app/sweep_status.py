"""A sweep's directory: sweep.yaml (the resolved sweep) and status.json, each cell's status as it changes, so
that a sweep that stopped continues where it was, whether by `sweep --resume DIR` or by running the same command
again: finished cells are not run again, an interrupted cell continues from its checkpoint, and a failed cell keeps
its one-line error (`--retry-failed` runs it again)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import yaml

from msfusion_ray.app.sweep_plan import SWEEP_FILE, SweepPlan, plain
from msfusion_ray.errors import UserInputError
from msfusion_ray.files import write_text_atomic
from msfusion_ray.inputs import load_json

STATUS_FILE = "status.json"


class SweepStatus:
    """status.json: per cell its grid values, status (pending, running, complete, failed), the one-line error of
    a failed cell and the summary of a finished one. Rewritten atomically on every change."""

    def __init__(self, directory: Path, cells: dict[str, dict[str, Any]]):
        self.path = directory / STATUS_FILE
        self.cells = cells

    @classmethod
    def load_or_new(cls, plan: SweepPlan) -> "SweepStatus":
        path = plan.directory / STATUS_FILE
        known = load_json(path).get("cells", {}) if path.is_file() else {}
        if not isinstance(known, dict) or not all(isinstance(cell, dict) for cell in known.values()):
            raise UserInputError(str(path), "'cells' must map each cell to its status")
        cells = {c.id: known.get(c.id) or {"values": c.values, "status": "pending", "error": None,
                                            "run_dir": f"cells/{c.id}"} for c in plan.cells}
        return cls(plan.directory, cells)

    def to_run(self, retry_failed: bool) -> list[str]:
        again = {"pending", "running"} | ({"failed"} if retry_failed else set())
        return [cell_id for cell_id, cell in self.cells.items() if cell["status"] in again]

    def set(self, cell_id: str, **values: Any) -> None:
        self.cells[cell_id].update(values)
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"cells": self.cells}, indent=2))

    def counts(self) -> dict[str, int]:
        counts = {"complete": 0, "running": 0, "failed": 0, "pending": 0}
        for cell in self.cells.values():
            counts[cell["status"]] += 1
        return counts


def create_directory(plan: SweepPlan) -> SweepStatus:
    """Write sweep.yaml (the resolved sweep) and status.json; both are kept when the sweep continues."""
    (plan.directory / "cells").mkdir(parents=True, exist_ok=True)
    sweep_file = plan.directory / SWEEP_FILE
    if not sweep_file.is_file():
        write_text_atomic(sweep_file, yaml.safe_dump(plain(dataclasses.asdict(plan.config)), sort_keys=False))
    status = SweepStatus.load_or_new(plan)
    status.save()
    return status


def cell_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What status.json keeps of a finished cell's summary (language models: the last test perplexity)."""
    keys = ("rounds_completed", "final_accuracy", "best_accuracy", "participants", "wall_s")
    perplexities = [h["perplexity"] for h in summary.get("history", [])
                    if h.get("perplexity") is not None and not math.isnan(h["perplexity"])]
    return {**{k: summary.get(k) for k in keys}, "final_perplexity": perplexities[-1] if perplexities else None}


def one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]
