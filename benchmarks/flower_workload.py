"""The FedAvg workload of benchmarks/flower.py as a user of plain PyTorch writes it, with no msfusion_ray import:
the FedAvg paper's CNN (benchmarks/fedavg_net.py, or the network `--model` names by import path), Fashion-MNIST
read from its IDX files, local SGD, sample-weighted averaging, evaluation on the test split. Flower's client and
server apps (flower_app.py) use it, and run as a script it is the bare loop (one process, torch's default
threads):

    python benchmarks/flower_workload.py WORKLOAD_DIR OUT.json

WORKLOAD_DIR holds workload.json (the settings) and workload.npz (the initial weights and each participant's
sample indices), written by benchmarks/flower.py from the same experiment msfusion_ray runs, so the three stacks
train the same model from the same weights on the same shards. A participant's batches each round follow
numpy's `default_rng([seed, round, participant]).permutation`, as msfusion_ray's participants draw them, so the
three stacks' accuracies can be compared to the third decimal.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

STARTED = time.time()  # noqa: E402  (before the imports: they are part of the start-up)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from fedavg_net import Net  # noqa: E402  (benchmarks/ is on the path: the script's folder, or PYTHONPATH)

FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def network_factory(source: str | None) -> Callable[[], nn.Module]:
    """The network: the FedAvg CNN, or what a `path/to/file.py:function` or `package.module:function` names,
    called as msfusion_ray calls a `model.name` function (the data's shape, the options)."""
    if source is None:
        return Net
    target, _, name = source.rpartition(":")
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"user_net_{Path(target).stem}", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    shape = SimpleNamespace(input_shape=(1, 28, 28), num_outputs=10, task="classification", input_dtype="float")
    return lambda: getattr(module, name)(shape, {})


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as stream:
        raw = stream.read()
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion_mnist(directory: str) -> dict[str, np.ndarray]:
    """Images as stored (uint8, N x 1 x 28 x 28; scaled batch by batch), labels as int64."""
    arrays = {}
    for name, stem in FILES.items():
        path = Path(directory) / f"{stem}.gz"
        raw = read_idx(path if path.is_file() else Path(directory) / stem)
        arrays[name] = raw[:, None] if name.endswith("x") else raw.astype(np.int64)
    return arrays


def inputs(images: np.ndarray) -> torch.Tensor:
    """A batch of model inputs: pixels / 255."""
    return torch.from_numpy(images.astype(np.float32)).div_(255.0)


class Workload:
    def __init__(self, directory: str | Path):
        directory = Path(directory)
        self.settings = json.loads((directory / "workload.json").read_text())
        arrays = np.load(directory / "workload.npz")
        self.initial = {key[len("w:"):]: arrays[key] for key in arrays.files if key.startswith("w:")}
        self.shards = [arrays[f"shard:{p}"] for p in range(self.settings["participants"])]
        self.data = read_fashion_mnist(self.settings["data_dir"])
        self.network = network_factory(self.settings.get("model"))

    def model(self, weights: dict[str, np.ndarray] | None = None) -> nn.Module:
        model = self.network()
        state = weights if weights is not None else self.initial
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        return model

    def train(self, weights: dict[str, np.ndarray], participant: int, round_idx: int) -> dict[str, np.ndarray]:
        """One participant's local epoch(s) from `weights`; its trained weights."""
        s = self.settings
        model = self.model(weights)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"])
        x, y = self.data["train_x"], torch.from_numpy(self.data["train_y"])
        shard = self.shards[participant]
        rng = np.random.default_rng([s["seed"], round_idx, participant])
        for _ in range(s["local_epochs"]):
            order = rng.permutation(len(shard))
            for start in range(0, len(shard), s["batch_size"]):
                chosen = shard[order[start:start + s["batch_size"]]]
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(inputs(x[chosen])), y[chosen]).backward()
                optimizer.step()
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def evaluate(self, weights: dict[str, np.ndarray]) -> tuple[float, float]:
        """(loss, accuracy) on the test split."""
        model = self.model(weights).eval()
        x, y = self.data["test_x"], torch.from_numpy(self.data["test_y"])
        batch = self.settings["eval_batch_size"]
        loss = correct = 0.0
        for start in range(0, len(y), batch):
            logits = model(inputs(x[start:start + batch]))
            loss += float(nn.functional.cross_entropy(logits, y[start:start + batch], reduction="sum"))
            correct += float((logits.argmax(1) == y[start:start + batch]).sum())
        return loss / len(y), correct / len(y)


_LOADED: dict[str, Workload] = {}


def cached(directory: str) -> Workload:
    """The workload, read once per process (a Flower client actor serves many participants)."""
    if directory not in _LOADED:
        _LOADED[directory] = Workload(directory)
    return _LOADED[directory]


def average(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """FedAvg: the sample-weighted mean of the participants' weights."""
    total = sum(n for _, n in updates)
    return {k: (sum(w[k].astype(np.float64) * n for w, n in updates) / total).astype(np.float32)
            for k in updates[0][0]}


def bare_loop(directory: str, out: str) -> None:
    workload = Workload(directory)
    timing = {"started": STARTED, "rounds": []}
    weights = workload.initial
    participants = workload.settings["participants"]
    for round_idx in range(1, workload.settings["rounds"] + 1):
        began = time.time()
        updates = [(workload.train(weights, p, round_idx), len(workload.shards[p])) for p in range(participants)]
        weights = average(updates)
        trained = time.time()
        loss, accuracy = workload.evaluate(weights)
        timing["rounds"].append({"round": round_idx, "train_start": began, "train_end": trained,
                                 "eval_start": trained, "eval_end": time.time(), "loss": loss,
                                 "accuracy": accuracy})
    timing["finished"] = time.time()
    Path(out).write_text(json.dumps(timing))


if __name__ == "__main__":
    bare_loop(sys.argv[1], sys.argv[2])
