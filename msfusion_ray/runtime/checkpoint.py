"""Checkpoints without pickle: arrays in .npz (loaded with allow_pickle=False), everything else in JSON.

Nested state (a strategy's, each participant's) may mix plain values and numpy arrays; arrays are moved into the
.npz under generated keys and replaced by {"__array__": key} in the JSON. Per-participant state is sparse: only
the participants whose memory holds anything have an entry (none for FedAvg), and the engine's tables keep the
participants that worked (ids and values as arrays), so a checkpoint does not grow with the registered fleet.

A checkpoint is trusted only whole. It is written into checkpoint.new/ with a manifest (manifest.json, written
last: the round, and for every file its size, its SHA-256 and, for an .npz, each array's name, shape and dtype),
then renamed into place; the previous checkpoint is kept until the new one is complete. Reading it back checks
every file against the manifest, the weights for non-finite values, and the state's round against the
manifest's, so damage is a one-line `UserInputError` naming the file, not a failure deep inside an actor.
`check_resume` goes further before a resumed run starts: the checkpoint against the run's records and config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msfusion_ray.errors import UserInputError, writing
from msfusion_ray.experiment.prepare import Experiment
from msfusion_ray.inputs import load_json
from msfusion_ray.models.weights import Weights, to_weights

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# What `load_checkpoint` reads: each must be in the manifest.
WEIGHTS, STRATEGY, PARTICIPANTS, STATE = "weights.npz", "strategy.npz", "participants.npz", "state.json"
ENGINE = "engine.npz"


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
    """Write the whole checkpoint into checkpoint.new/ (its manifest last), then swap it in for the previous one,
    which is kept until then: at every moment one complete checkpoint exists. A file that cannot be written (a
    full disk) raises `WriteFailed` naming it, checkpoint.new/ removed and the previous checkpoint untouched."""
    root = Path(run_dir)
    final, new, old = root / "checkpoint", root / "checkpoint.new", root / "checkpoint.old"
    _finish_swap(root)
    shutil.rmtree(new, ignore_errors=True)
    participant_arrays: dict[str, np.ndarray] = {}
    state = {
        "round": checkpoint.round,
        "strategy": checkpoint.strategy_values,
        "engine": checkpoint.engine_values,
        "participants": split_arrays({str(k): v for k, v in checkpoint.participants.items()}, participant_arrays),
    }
    files = {WEIGHTS: lambda path: np.savez(path, **checkpoint.weights),
             STRATEGY: lambda path: np.savez(path, **checkpoint.strategy_arrays),
             ENGINE: lambda path: np.savez(path, **checkpoint.engine_arrays),
             PARTICIPANTS: lambda path: np.savez(path, **participant_arrays),
             STATE: lambda path: path.write_text(json.dumps(state)),
             MANIFEST: lambda path: write_manifest(new, checkpoint.round)}
    with writing(new, partial=(new,)):
        new.mkdir(parents=True)
    for name, write in files.items():
        with writing(new / name, partial=(new,)):
            write(new / name)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    _sync(root)
    shutil.rmtree(old, ignore_errors=True)


def _finish_swap(root: Path) -> None:
    """Complete a swap that a crash cut short (the new checkpoint complete, not yet renamed), and drop leftovers."""
    final, new, old = root / "checkpoint", root / "checkpoint.new", root / "checkpoint.old"
    if not final.exists() and (new / MANIFEST).is_file():
        os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(run_dir: str | Path) -> Path | None:
    """The run's checkpoint directory: checkpoint/, or a complete checkpoint.new/ that a crash kept from being
    renamed (its manifest is written last); None if the run has none."""
    root = Path(run_dir)
    if (root / "checkpoint").exists():
        return root / "checkpoint"
    if (root / "checkpoint.new" / MANIFEST).is_file():
        return root / "checkpoint.new"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def npz_arrays(path: Path) -> dict[str, dict[str, Any]]:
    """Name, shape and dtype of every array in an .npz, read from the headers (the data is not loaded)."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(stream)
            arrays[member.removesuffix(".npy")] = {"shape": list(shape), "dtype": dtype.str}
    return arrays


def _sync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk, so that a rename never outruns its contents."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_manifest(directory: Path, round_idx: int) -> None:
    """manifest.json over every file in `directory` (whatever .npz and .json files a checkpoint holds)."""
    files = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST):
        _sync(path)
        entry: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        if path.suffix == ".npz":
            entry["arrays"] = npz_arrays(path)
        files[path.name] = entry
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"format": MANIFEST_FORMAT, "round": round_idx, "files": files}, indent=1))
    _sync(manifest)
    _sync(directory)


def verify_files(directory: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest, after checking every file it lists (present, its size, its checksum) and that it lists the
    `required` ones; a problem is a `UserInputError` naming the file."""
    manifest_path = directory / MANIFEST
    manifest = load_json(manifest_path)
    files, round_idx = manifest.get("files"), manifest.get("round")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not isinstance(round_idx, int) \
            or isinstance(round_idx, bool):
        raise UserInputError(str(manifest_path), f"not a checkpoint manifest of format {MANIFEST_FORMAT}")
    for name in required:
        if name not in files:
            raise UserInputError(str(directory / name), f"not listed in {MANIFEST}")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise UserInputError(str(path), f"missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            problem = "truncated" if isinstance(entry.get("bytes"), int) and size < entry["bytes"] else "wrong size"
            raise UserInputError(str(path), f"{problem}: {size} bytes, {MANIFEST} says {entry.get('bytes')}")
        if _sha256(path) != entry.get("sha256"):
            raise UserInputError(str(path), f"damaged: its SHA-256 differs from the one in {MANIFEST}")
    return manifest


def _load_npz(path: Path, expected: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001  (a damaged archive raises whatever its bytes make it raise)
        raise UserInputError(str(path), f"cannot read the arrays ({type(err).__name__}: {err})") from None
    listed = {name: (tuple(a["shape"]), a["dtype"]) for name, a in expected.items()}
    found = {name: (a.shape, a.dtype.str) for name, a in arrays.items()}
    if found != listed:
        differing = sorted(set(found.items()) ^ set(listed.items()))[0][0]
        raise UserInputError(str(path), f"array {differing!r} differs from {MANIFEST} "
                                        f"(found {found.get(differing)}, listed {listed.get(differing)})")
    return arrays


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The run's last checkpoint, verified (see `verify_files`; the weights finite, the round the manifest's);
    None if the run has none."""
    directory = checkpoint_dir(run_dir)
    if directory is None:
        return None
    manifest = verify_files(directory, required=(WEIGHTS, STRATEGY, PARTICIPANTS, ENGINE, STATE))
    files = manifest["files"]

    def arrays(name: str) -> dict[str, np.ndarray]:
        return _load_npz(directory / name, files[name].get("arrays", {}))

    weights = arrays(WEIGHTS)
    for name, array in weights.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UserInputError(str(directory / WEIGHTS), f"'{name}' holds non-finite values (NaN or infinity)")
    state = load_json(directory / STATE)
    if state.get("round") != manifest["round"]:
        raise UserInputError(str(directory / STATE), f"names round {state.get('round')!r}, {MANIFEST} round "
                                                    f"{manifest['round']}")
    if manifest["round"] < 1:
        raise UserInputError(str(directory / STATE), f"names round {manifest['round']} (a checkpoint is of a finished "
                                                    f"round: 1 or more)")
    try:
        participants = join_arrays(state["participants"], arrays(PARTICIPANTS))
        by_id = {int(k): v for k, v in participants.items()}
        strategy_values, engine_values = state["strategy"], state["engine"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserInputError(str(directory / STATE), f"malformed checkpoint state ({type(err).__name__}: {err})") \
            from None
    return Checkpoint(round=manifest["round"], weights=weights, strategy_values=strategy_values,
                      strategy_arrays=arrays(STRATEGY), participants=by_id, engine_values=engine_values,
                      engine_arrays=arrays(ENGINE))


_ROUND_FILE = re.compile(r"round-(\d+)\.parquet")


def recorded_rounds(run_dir: str | Path, kind: str) -> dict[int, Path]:
    """The round files of one kind of record (participants or rounds), by round."""
    folder = Path(run_dir) / "records" / kind
    found = {}
    for path in folder.glob("round-*.parquet") if folder.is_dir() else ():
        match = _ROUND_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def check_resume(run_dir: str | Path, experiment: Experiment) -> Checkpoint | None:
    """Everything a resumed run will read, checked against each other before anything starts: the checkpoint
    (whole, see `load_checkpoint`), the records of every round up to it, the summary, and the config (rounds,
    the global model's weights, the fleet's participants, the strategy's state). None: the run has no
    checkpoint and may start over (it stopped before its first one)."""
    import pandas as pd

    run_dir = Path(run_dir)
    config = experiment.config
    checkpoint = load_checkpoint(run_dir)
    records = {kind: recorded_rounds(run_dir, kind) for kind in ("rounds", "participants")}
    if checkpoint is None:
        first = min(config.runtime.checkpoint_every, config.rounds)
        reached = max([*records["rounds"], *records["participants"], 0])
        if reached > first:
            raise UserInputError(str(run_dir / "checkpoint"), f"missing, but the records reach round {reached} "
                                                              f"(a checkpoint is written every "
                                                              f"{config.runtime.checkpoint_every} rounds)")
        return None
    directory = checkpoint_dir(run_dir)
    if checkpoint.round > config.rounds:
        raise UserInputError(str(directory / STATE), f"is of round {checkpoint.round} but the config asks for "
                                                    f"{config.rounds} rounds")
    for kind, found in records.items():
        for round_idx in range(1, checkpoint.round + 1):
            path = found.get(round_idx, run_dir / "records" / kind / f"round-{round_idx:06d}.parquet")
            if round_idx not in found:
                raise UserInputError(str(path), f"missing, but the checkpoint is of round {checkpoint.round}")
            try:
                rounds = set(pd.read_parquet(path, columns=["round"])["round"].tolist())
            except Exception as err:  # noqa: BLE001  (pyarrow's errors for a damaged file vary)
                raise UserInputError(str(path), f"cannot read the records ({type(err).__name__})") from None
            if rounds - {round_idx}:
                raise UserInputError(str(path), f"holds rows of round {sorted(rounds - {round_idx})[0]}")
    _check_against_config(directory, checkpoint, experiment)
    return checkpoint


def _check_against_config(directory: Path, checkpoint: Checkpoint, experiment: Experiment) -> None:
    expected = {name: array.shape for name, array in to_weights(experiment.family.build()).items()}
    found = {name: array.shape for name, array in checkpoint.weights.items()}
    if found != expected:
        name = sorted(set(found.items()) ^ set(expected.items()))[0][0]
        raise UserInputError(str(directory / WEIGHTS), f"does not fit the config's model: '{name}' has shape "
                                                      f"{found.get(name)}, the model {expected.get(name)}")
    size = len(experiment.fleet)
    unknown = sorted(pid for pid in checkpoint.participants if not 0 <= pid < size)
    if unknown:  # the others' memory held nothing: a checkpoint keeps only those whose memory holds anything
        raise UserInputError(str(directory / STATE), f"unknown participant {unknown[0]} (the fleet has participants "
                                                    f"0 to {size - 1})")
    for name in ("consumed_ids", "busy_ids"):
        ids = checkpoint.engine_arrays.get(name, np.zeros(0, dtype=np.int64))
        if ids.dtype.kind not in "iu" or ids.ndim != 1 or len(ids) and not (0 <= ids.min() and ids.max() < size):
            raise UserInputError(str(directory / ENGINE), f"'{name}' names participants outside the fleet's 0 to "
                                                         f"{size - 1}")
    try:
        copy.deepcopy(experiment.strategy).load_state_dict(checkpoint.strategy_values, checkpoint.strategy_arrays)
    except Exception as err:  # noqa: BLE001  (a strategy's own state reader)
        raise UserInputError(str(directory / STATE), f"the strategy's state does not load "
                                                    f"({type(err).__name__}: {err})") from None
