"""Overhead of msfusion_ray against a bare single-process PyTorch loop doing the same FedAvg training.

The same rounds twice, in one invocation: through msfusion_ray (driver actor, host actors, memory guard, FLOP
counting, virtual clocks, records, checkpoints) and as a plain loop in this process (the same model and initial
weights, the same data shards, the same number of local steps and batch size per participant, the same optimizer,
sample-weighted averaging). The bare loop runs twice, on torch's default threads (every core) and on one thread.
Both sides are timed per round on training and aggregation; evaluation happens only after the last round on the
msfusion_ray side and not at all on the bare side, and is not in either figure. Rounds after the first are
compared (the first warms up caches on both sides). Repeats alternate the two, so that both see the same machine
load; the ratio is taken within each repeat, then its median reported.

    .venv/bin/python benchmarks/overhead.py                 # 8 participants, 5 rounds, 3 repeats
    .venv/bin/python benchmarks/overhead.py --participants 4 --rounds 3 --repeats 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_DEVICE, load, measured_run, median, ray_session, report  # noqa: E402
from msfusion_ray.config import ExperimentConfig  # noqa: E402
from msfusion_ray.devices.profile import default_profiles_dir  # noqa: E402
from msfusion_ray.experiment.config_check import config_from_dict  # noqa: E402
from msfusion_ray.experiment.prepare import Experiment, prepare  # noqa: E402

def config_for(args: argparse.Namespace, profiles_dir: Path, output_dir: Path) -> ExperimentConfig:
    return config_from_dict({
        "name": "overhead", "rounds": args.rounds, "seed": 0,
        "data": {"dataset": "fashion_mnist", "partition": "iid", "train_samples": 1000 * args.participants,
                 "eval_samples": 1000},
        "model": {"name": "cnn", "width": 1.0},
        "fleet": {"devices": {"bench-device": args.participants}, "profiles_dir": str(profiles_dir)},
        "strategy": {"name": "fedavg"},
        "training": {"local_steps": args.steps, "batch_size": args.batch_size, "lr": 0.05, "momentum": 0.9},
        "runtime": {"hosts": args.hosts, "eval_every": args.rounds},
        "output_dir": str(output_dir),
    })


def bare_rounds(prepared: Experiment, steps: int, batch_size: int, threads: int) -> list[float]:
    """FedAvg as one would write it without a framework, on `threads` torch threads; seconds per round (train
    every participant, average)."""
    from msfusion_ray.runtime.runner import initial_weights

    config = prepared.config
    torch.set_num_threads(threads)
    model = prepared.family.build()
    state = {k: torch.from_numpy(v) for k, v in initial_weights(prepared).items()}
    x, y = prepared.data.to_batch(prepared.data.train.x, prepared.data.train.y)  # the whole split, once
    rng = np.random.default_rng(0)
    times = []
    for _ in range(config.rounds):
        started = time.perf_counter()
        sums = {k: torch.zeros_like(v) for k, v in state.items()}
        total = 0
        for shard in prepared.partitions:
            model.load_state_dict(state, strict=False)
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=config.training.lr, momentum=config.training.momentum)
            order = rng.permutation(shard)
            for step in range(steps):
                batch = order[(step * batch_size) % len(order):][:batch_size]
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            samples = steps * batch_size
            trained = model.state_dict()
            for key in sums:
                sums[key] += samples * trained[key].detach()
            total += samples
        state = {k: v / total for k, v in sums.items()}
        times.append(time.perf_counter() - started)
    return times


def framework_rounds(prepared: Experiment) -> tuple[list[float], float]:
    """The same rounds through msfusion_ray: the driver's wall time per round, and the whole run's."""
    from msfusion_ray.records import read_round_rows

    run = measured_run(prepared)
    return read_round_rows(run["run_dir"])["wall_round_s"].tolist(), run["run_wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="local steps per participant and round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=2, help="msfusion_ray host actors (one thread each)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = []
    cores = torch.get_num_threads()  # torch's default: every core
    with tempfile.TemporaryDirectory() as scratch, ray_session():
        profiles = Path(scratch) / "profiles"
        shutil.copytree(default_profiles_dir(), profiles)
        (profiles / "bench-device.yaml").write_text(yaml.safe_dump(BENCH_DEVICE))
        prepared = prepare(config_for(args, profiles, Path(scratch) / "runs"))
        for repeat in range(args.repeats):
            load_before = load()
            bare = bare_rounds(prepared, args.steps, args.batch_size, cores)
            bare_one = bare_rounds(prepared, args.steps, args.batch_size, 1)
            framework, framework_total = framework_rounds(prepared)
            result = {"repeat": repeat + 1, "msfusion_round_s": median(framework[1:]),
                      "bare_round_s": median(bare[1:]), "bare_1_thread_round_s": median(bare_one[1:]),
                      "msfusion_run_s": framework_total, "bare_run_s": sum(bare), "load_before": load_before,
                      "load_after": load()}
            result["ratio"] = result["msfusion_round_s"] / result["bare_round_s"]
            result["ratio_1_thread"] = result["msfusion_round_s"] / result["bare_1_thread_round_s"]
            repeats.append({**result, "bare_rounds_s": bare, "bare_1_thread_rounds_s": bare_one,
                            "msfusion_rounds_s": framework})
            print(f"repeat {repeat + 1}: {result}", file=sys.stderr, flush=True)
    summary = {key: median([r[key] for r in repeats]) for key in
               ("msfusion_round_s", "bare_round_s", "ratio", "bare_1_thread_round_s", "ratio_1_thread",
                "msfusion_run_s", "bare_run_s")}
    summary["bare torch threads"] = cores
    loads = [r["load_before"] for r in repeats] + [r["load_after"] for r in repeats]
    summary["load (min-max)"] = f"{min(loads):.1f}-{max(loads):.1f}"
    report("overhead", {"args": vars(args), "repeats": repeats, "medians": summary}, [summary])


if __name__ == "__main__":
    main()
