"""The same FedAvg workload through msfusion_ray (its defaults), Flower's simulation and a bare PyTorch loop.

The workload (issue 12): the FedAvg paper's CNN (1.66 M parameters), 10 participants of 600 Fashion-MNIST
training images (IID), one local epoch at batch 32 (SGD, msfusion_ray's default learning rate and momentum),
5 rounds, the global model evaluated on the 10 000 test images after every round, inputs scaled as pixels / 255
on every side (msfusion_ray: `data.normalize: false`). The three start from the same initial weights, train on
the same shards and draw the same batches. `--model PATH.py:FUNC` (issue 29) gives every side the network a
user's function builds, by import path: msfusion_ray's `model.name`, the bare loop's and Flower's clients'
network (benchmarks/fedavg_net.py is the FedAvg CNN written so); by default msfusion_ray runs its built-in
`fedavg_cnn` and the others that network written out. `--lr`, `--momentum` change the recipe on every side;
`--seeds` runs one repetition per seed (data subset, initial weights, batches), for accuracy over seeds.

Each side runs as a program of its own, as a user would start it, and each repetition runs the three one after
another (the order rotating between repetitions), so that they see the same machine load; ratios are taken
within a repetition, then their median reported:

- msfusion_ray: `python -m msfusion_ray run CONFIG --no-plots` with nothing else set (hosts, threads,
  evaluation: defaults); its timings from the run's summary.json and records;
- Flower: `benchmarks/flower_app.py` with the Python of a virtual environment of its own (flwr[simulation],
  made here on first use, never the project's), 10 supernodes, `--client-cpus` CPUs per client actor
  (default 1: as many single-thread actors as cores), the FedAvg strategy with central evaluation of each
  round's model (not of the initial one, which Flower's `evaluate_fn` would also do);
- bare: `benchmarks/flower_workload.py`, one process on torch's default threads.

Figures per side: end to end (launch to exit), start-up (launch to the first training), launch to round 1 (to
the start of round 1: for Flower before its Ray start, which it does in round 1; start-up less this is that
Ray start), steady round (rounds 2 to the last: start of a round to the start of the next; the last to the end
of its evaluation), evaluation (median wall seconds of one), training GFLOP/s (a round's counted training FLOPs
over the steady round less its evaluation), peak memory of all the program's processes (summed resident sets
sampled every 0.2 s, summed proportional sets every 1 s: reading them costs the programs CPU), the CPU seconds
they used (less sensitive than wall time to other work on the machine), final test accuracy (and its mean and
spread over the repetitions). Flower's telemetry is off (FLWR_TELEMETRY_ENABLED=0) and every program runs with
the embedded cluster's loopback-only environment.

    .venv/bin/python benchmarks/flower.py                  # 3 repetitions
    .venv/bin/python benchmarks/flower.py --repeats 1 --sides msfusion_ray bare
    .venv/bin/python benchmarks/flower.py --model benchmarks/fedavg_net.py:make_net --momentum 0
    .venv/bin/python benchmarks/flower.py --sides msfusion_ray bare --seeds 0 1 2 3 4 --model ... --momentum 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BENCH_DEVICE, TreeMemory, load, median, report  # noqa: E402

FLOWER_REQUIREMENTS = ["flwr[simulation]==1.42.0", "torch==2.13.0"]
DEFAULT_FLOWER_VENV = ROOT / "benchmarks" / "out" / "flower-venv"  # git-ignored, made on first use
SIDES = ("msfusion_ray", "flower", "bare")
RUN_TIMEOUT_S = 1800


def model_source(model: str | None) -> str | None:
    """`--model` with its file made absolute (every side loads it from its own working directory)."""
    if model is None:
        return None
    target, _, name = model.rpartition(":")
    return f"{Path(target).resolve()}:{name}" if target.endswith(".py") else model


def workload_config(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The workload as an msfusion_ray experiment: only what defines the work; the runtime is left at its
    defaults."""
    recipe = {key: value for key, value in (("lr", args.lr), ("momentum", args.momentum)) if value is not None}
    return {
        "name": "flower-bench", "rounds": args.rounds, "seed": args.seed,
        "data": {"dataset": "fashion_mnist", "partition": "iid", "train_samples": args.participants * args.samples,
                 "normalize": False},
        "model": {"name": model_source(args.model) or "fedavg_cnn"},
        "fleet": {"devices": {BENCH_DEVICE["name"]: args.participants}, "profiles_dir": str(scratch / "profiles")},
        "strategy": {"name": "fedavg"},
        "training": {"local_epochs": 1, "batch_size": args.batch_size, **recipe},
        "output_dir": str(scratch / "runs"),
    }


def write_workload(args: argparse.Namespace, scratch: Path) -> Path:
    """The experiment's config for msfusion_ray, and for the other two its settings, initial weights and shards
    (indices into the full training split), all from one `prepare`."""
    from msfusion_ray.config import RuntimeConfig
    from msfusion_ray.data.fashion_mnist import DEFAULT_DIR
    from msfusion_ray.data.subsets import subset_indices
    from msfusion_ray.devices.profile import default_profiles_dir
    from msfusion_ray.experiment.config_check import config_from_dict
    from msfusion_ray.experiment.prepare import prepare
    from msfusion_ray.runtime.runner import initial_weights

    shutil.copytree(default_profiles_dir(), scratch / "profiles")
    (scratch / "profiles" / f"{BENCH_DEVICE['name']}.yaml").write_text(yaml.safe_dump(BENCH_DEVICE))
    config = workload_config(args, scratch)
    (scratch / "workload.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    prepared = prepare(config_from_dict(config))
    train_total = 60000
    chosen = subset_indices(train_total, config["data"]["train_samples"], args.seed, "train")
    chosen = np.arange(train_total) if chosen is None else chosen
    arrays = {f"w:{k}": v for k, v in initial_weights(prepared).items()}
    arrays.update({f"shard:{p}": chosen[part] for p, part in enumerate(prepared.partitions)})
    np.savez(scratch / "workload.npz", **arrays)
    training = prepared.config.training
    settings = {"participants": args.participants, "rounds": args.rounds, "seed": args.seed, "local_epochs": 1,
                "batch_size": args.batch_size, "lr": training.lr, "momentum": training.momentum,
                "eval_batch_size": RuntimeConfig().eval_batch_size, "data_dir": str(DEFAULT_DIR),
                "model": model_source(args.model)}
    (scratch / "workload.json").write_text(json.dumps(settings))
    return scratch


def ensure_flower_venv(venv: Path) -> Path:
    """The Python of a virtual environment holding Flower's simulation (made and filled on first use)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import flwr, ray, torch; print(flwr.__version__)"]
    if python.is_file() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "1.42.0":
        return python
    print(f"installing {' '.join(FLOWER_REQUIREMENTS)} into {venv}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *FLOWER_REQUIREMENTS], check=True)
    return python


def environment(workload_dir: Path) -> dict[str, str]:
    from msfusion_ray.runtime.cluster import OFFLINE_LOOPBACK_ENV

    env = {**os.environ, **OFFLINE_LOOPBACK_ENV, "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": str(ROOT / "benchmarks")}
    env.pop("RAY_ADDRESS", None)
    return env


def launch(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run a program to its end while watching its processes' memory."""
    with open(log, "w") as output:
        launched = time.time()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        with TreeMemory(process.pid) as memory:
            code = process.wait(timeout=RUN_TIMEOUT_S)
        exited = time.time()
    if code != 0:
        tail = log.read_text().splitlines()[-5:]
        raise RuntimeError(f"{command[:3]} exited with {code}: " + " | ".join(tail))
    return {"launched": launched, "exited": exited, "peak_rss_mb": memory.peak_rss_bytes / 1e6,
            "peak_pss_mb": memory.peak_pss_bytes / 1e6, "processes": memory.most_processes, "cpu_s": memory.cpu_s}


def steady(starts: list[float], last_end: float) -> float:
    """Median round from round 2 on: each round's start to the next's, the last to the end of its evaluation."""
    ends = starts[1:] + [last_end]
    return median([end - start for start, end in zip(starts[1:], ends[1:])])


def msfusion_side(scratch: Path, env: dict[str, str], rep: int) -> dict[str, Any]:
    from msfusion_ray.records import read_participant_rows, read_round_rows

    out = scratch / f"msfusion-{rep}"
    command = [sys.executable, "-m", "msfusion_ray", "run", str(scratch / "workload.yaml"), "--no-plots",
               "--set", f"output_dir={out}"]
    run = launch(command, env, scratch / f"msfusion-{rep}.log")
    run_dir = next(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    timing = summary["timing"]
    rounds, participants = read_round_rows(run_dir), read_participant_rows(run_dir)
    starts = [timing["run_started"], *timing["steps"][:-1]]
    return {**run, "first_training": timing["run_started"], "round_starts": starts, "finished": timing["finished"],
            "steady_round_s": steady(starts, timing["finished"]),
            "evaluation_s": median(rounds["wall_eval_s"].tolist()),
            "train_flops_per_round": float(participants.groupby("round")["flops"].sum().median()),
            "final_accuracy": summary["final_accuracy"], "hosts": summary["hosts"]}


def flower_side(python: Path, scratch: Path, env: dict[str, str], rep: int, client_cpus: float) -> dict[str, Any]:
    out = scratch / f"flower-{rep}.json"
    command = [str(python), str(ROOT / "benchmarks" / "flower_app.py"), str(scratch), str(out),
               "--client-cpus", str(client_cpus)]
    run = launch(command, env, scratch / f"flower-{rep}.log")
    timing = json.loads(out.read_text())
    rounds = [timing["rounds"][key] for key in sorted(timing["rounds"], key=int) if int(key) >= 1]
    starts = [r["train_start"] for r in rounds]
    first = min(start for start, _ in rounds[0]["client_train"])
    return {**run, "first_training": first, "round_starts": starts, "finished": rounds[-1]["eval_end"],
            "steady_round_s": steady(starts, rounds[-1]["eval_end"]),
            "evaluation_s": median([r["eval_end"] - r["eval_start"] for r in rounds]),
            "final_accuracy": rounds[-1]["accuracy"]}


def bare_side(scratch: Path, env: dict[str, str], rep: int) -> dict[str, Any]:
    out = scratch / f"bare-{rep}.json"
    run = launch([sys.executable, str(ROOT / "benchmarks" / "flower_workload.py"), str(scratch), str(out)], env,
                 scratch / f"bare-{rep}.log")
    timing = json.loads(out.read_text())
    rounds = timing["rounds"]
    starts = [r["train_start"] for r in rounds]
    return {**run, "first_training": starts[0], "round_starts": starts, "finished": rounds[-1]["eval_end"],
            "steady_round_s": steady(starts, rounds[-1]["eval_end"]),
            "evaluation_s": median([r["eval_end"] - r["eval_start"] for r in rounds]),
            "final_accuracy": rounds[-1]["accuracy"]}


def figures(side: dict[str, Any], train_flops: float) -> dict[str, float]:
    return {"end_to_end_s": side["exited"] - side["launched"], "start_up_s": side["first_training"] - side["launched"],
            "to_round_1_s": side["round_starts"][0] - side["launched"],
            "steady_round_s": side["steady_round_s"], "evaluation_s": side["evaluation_s"],
            "training_gflops": train_flops / 1e9 / max(side["steady_round_s"] - side["evaluation_s"], 1e-9),
            "after_last_round_s": side["exited"] - side["finished"],
            "peak_rss_mb": side["peak_rss_mb"], "peak_pss_mb": side["peak_pss_mb"], "cpu_s": side["cpu_s"],
            "final_accuracy": side["final_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--samples", type=int, default=600, help="training images per participant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", help="the network by import path on every side, PATH.py:FUNC or "
                                        "package.module:FUNC (default: msfusion_ray's built-in fedavg_cnn, and the "
                                        "same network written out for the bare loop and Flower)")
    parser.add_argument("--lr", type=float, help="SGD's learning rate (default: msfusion_ray's)")
    parser.add_argument("--momentum", type=float, help="SGD's momentum (default: msfusion_ray's)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: the data, the weights, the batches")
    parser.add_argument("--seeds", type=int, nargs="+", help="one repetition per seed (instead of --repeats of "
                                                              "--seed): final accuracy over seeds")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--client-cpus", type=float, default=1.0, help="Flower: CPUs per client actor")
    parser.add_argument("--flower-venv", type=Path, default=DEFAULT_FLOWER_VENV)
    args = parser.parse_args()
    python = ensure_flower_venv(args.flower_venv) if "flower" in args.sides else None
    repetitions = []
    seeds = args.seeds if args.seeds is not None else [args.seed] * args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        for rep, seed in enumerate(seeds):
            if rep == 0 or seed != seeds[rep - 1]:
                scratch = Path(tmp) / f"seed-{seed}-{rep}"
                scratch.mkdir()
                write_workload(argparse.Namespace(**{**vars(args), "seed": seed}), scratch)
                env = environment(scratch)
            order = [args.sides[(rep + i) % len(args.sides)] for i in range(len(args.sides))]
            runs: dict[str, dict[str, Any]] = {}
            loads = {}
            for side in order:
                loads[side] = load()
                if side == "msfusion_ray":
                    runs[side] = msfusion_side(scratch, env, rep)
                elif side == "flower":
                    runs[side] = flower_side(python, scratch, env, rep, args.client_cpus)
                else:
                    runs[side] = bare_side(scratch, env, rep)
                print(f"repetition {rep + 1} {side}: {json.dumps(runs[side])}", file=sys.stderr, flush=True)
            flops = next((r["train_flops_per_round"] for r in runs.values() if "train_flops_per_round" in r), None)
            flops = flops if flops is not None else training_flops(args)
            repetitions.append({"repeat": rep + 1, "seed": seed, "order": order, "load_before": loads,
                                "load_after": load(),
                                "raw": runs, "figures": {side: figures(run, flops) for side, run in runs.items()}})
    tables = summarise(repetitions, args.sides)
    report("flower", {"args": {k: str(v) for k, v in vars(args).items()}, "repetitions": repetitions,
                      "medians": tables}, tables)


def training_flops(args: argparse.Namespace) -> float:
    """A round's counted training FLOPs (when msfusion_ray, which records them, was not among the sides)."""
    from msfusion_ray.costs.flops import TrainingStepFlops
    from msfusion_ray.models import DataShape, build_family
    from msfusion_ray.training.losses import loss_of

    family = build_family(model_source(args.model) or "fedavg_cnn", DataShape((1, 28, 28), 10), seed=args.seed)
    steps = TrainingStepFlops(family.build, family.example_batch, loss_of("classification"))
    full, rest = divmod(args.samples, args.batch_size)
    per_participant = full * steps.flops({}, args.batch_size) + (steps.flops({}, rest) if rest else 0)
    return float(per_participant * args.participants)


def summarise(repetitions: list[dict[str, Any]], sides: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Medians per side, and msfusion_ray's figures as ratios to each other side's, taken within each
    repetition."""
    keys = list(repetitions[0]["figures"][sides[0]])
    per_side = [{"side": side, **{k: median([r["figures"][side][k] for r in repetitions]) for k in keys}}
                for side in sides]
    loads = [v for r in repetitions for v in [*r["load_before"].values(), r["load_after"]]]
    per_side.append({"side": "load (min-max)", **{k: "" for k in keys}})
    per_side[-1][keys[0]] = f"{min(loads):.1f}-{max(loads):.1f}"
    ratios = []
    if "msfusion_ray" in sides:
        for other in (s for s in sides if s != "msfusion_ray"):
            row = {"msfusion_ray / ": other}
            for k in keys:
                if k == "final_accuracy":
                    row["accuracy difference"] = median([r["figures"]["msfusion_ray"][k] - r["figures"][other][k]
                                                         for r in repetitions])
                else:
                    row[k] = median([r["figures"]["msfusion_ray"][k] / r["figures"][other][k]
                                     for r in repetitions if r["figures"][other][k]])
            ratios.append(row)
    accuracy = [{"side": side, **spread([r["figures"][side]["final_accuracy"] for r in repetitions]),
                 "per repetition (seed)": ", ".join(f"{r['figures'][side]['final_accuracy']:.4f} ({r['seed']})"
                                                    for r in repetitions)} for side in sides]
    return {"medians per side": per_side, "msfusion_ray as a ratio (within each repetition), median": ratios,
            "final accuracy over the repetitions": accuracy}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


if __name__ == "__main__":
    main()
