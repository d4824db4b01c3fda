"""Evaluation throughput by batch size on one CPU thread (as a host evaluates its share): what
`runtime.eval_batch_size` defaults to. Each model's forward passes over the same inputs at every batch size, the
sizes interleaved and repeated, best of `--repeats` (the least disturbed by other work on the machine).

    .venv/bin/python benchmarks/eval_batch.py
    .venv/bin/python benchmarks/eval_batch.py --sizes 64 128 256 500 --repeats 9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load, report  # noqa: E402
from msfusion_ray.models import DataShape, build_family  # noqa: E402

MODELS = [("fedavg_cnn", 1.0, (1, 28, 28), 2000), ("cnn", 1.0, (1, 28, 28), 2000), ("resnet18", 0.25, (3, 32, 32), 1000)]


def images_per_s(name: str, width: float, shape: tuple[int, ...], images: int, sizes: list[int],
                 repeats: int) -> dict[int, float]:
    model = build_family(name, DataShape(shape, 10), width).build().eval()
    x = torch.rand(images, *shape)
    best = {size: float("inf") for size in sizes}
    with torch.no_grad():
        for _ in range(repeats):
            for size in sizes:
                started = time.perf_counter()
                for start in range(0, images, size):
                    model(x[start:start + size])
                best[size] = min(best[size], time.perf_counter() - started)
    return {size: images / seconds for size, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 500])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = load()
    rows = []
    for name, width, shape, images in MODELS:
        speeds = images_per_s(name, width, shape, images, args.sizes, args.repeats)
        rows.append({"model": f"{name} (width {width:g})", **{f"batch {s}": round(v) for s, v in speeds.items()}})
        print(rows[-1], file=sys.stderr, flush=True)
    rows.append({"model": "load (before-after)", **{f"batch {s}": "" for s in args.sizes}})
    rows[-1][f"batch {args.sizes[0]}"] = f"{load_before:.1f}-{load():.1f}"
    report("eval_batch", {"args": vars(args), "images_per_s": rows}, rows)


if __name__ == "__main__":
    main()
