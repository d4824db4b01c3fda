"""Checkpoints without pickle: arrays in .npz (loaded with allow_pickle=False), everything else in JSON.

Nested state (a strategy's, each participant's) may mix plain values and numpy arrays; arrays are moved into the
.npz under generated keys and replaced by {"__array__": key} in the JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msfusion_ray.models.weights import Weights


def split_arrays(value: Any, arrays: dict[str, np.ndarray], prefix: str = "a") -> Any:
    """JSON-able copy of `value` with every numpy array moved into `arrays`."""
    if isinstance(value, np.ndarray):
        key = f"{prefix}{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, dict):
        return {"__dict__": [[split_arrays(k, arrays, prefix), split_arrays(v, arrays, prefix)]
                             for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [split_arrays(v, arrays, prefix) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def join_arrays(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return np.array(arrays[value["__array__"]])
        return {join_arrays(k, arrays): join_arrays(v, arrays) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [join_arrays(v, arrays) for v in value]
    return value


@dataclass
class Checkpoint:
    round: int  # the last finished round
    weights: Weights
    strategy_values: dict[str, Any]
    strategy_arrays: dict[str, np.ndarray]
    participants: dict[int, Any]
    engine_values: dict[str, Any]
    engine_arrays: dict[str, np.ndarray]


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    """Write to a temporary directory, then swap it in: a crash never leaves a half-written checkpoint."""
    final = Path(run_dir) / "checkpoint"
    tmp = Path(run_dir) / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / "weights.npz", **checkpoint.weights)
    np.savez(tmp / "strategy.npz", **checkpoint.strategy_arrays)
    np.savez(tmp / "engine.npz", **checkpoint.engine_arrays)
    participant_arrays: dict[str, np.ndarray] = {}
    state = {
        "round": checkpoint.round,
        "strategy": checkpoint.strategy_values,
        "engine": checkpoint.engine_values,
        "participants": split_arrays({str(k): v for k, v in checkpoint.participants.items()}, participant_arrays),
    }
    np.savez(tmp / "participants.npz", **participant_arrays)
    (tmp / "state.json").write_text(json.dumps(state))
    old = Path(run_dir) / "checkpoint.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    directory = Path(run_dir) / "checkpoint"
    if not (directory / "state.json").is_file():
        return None
    state = json.loads((directory / "state.json").read_text())

    def arrays(name: str) -> dict[str, np.ndarray]:
        with np.load(directory / name, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    participants = join_arrays(state["participants"], arrays("participants.npz"))
    return Checkpoint(round=state["round"], weights=arrays("weights.npz"), strategy_values=state["strategy"],
                      strategy_arrays=arrays("strategy.npz"),
                      participants={int(k): v for k, v in participants.items()},
                      engine_values=state["engine"], engine_arrays=arrays("engine.npz"))
