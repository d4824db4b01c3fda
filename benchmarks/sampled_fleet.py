"""A fleet sampled from the shipped phone list against a fleet of one profile, at the same size (issue 26's target:
10 000 sampled phones validate and start within 10 % of the time 10 000 participants of one profile take).

Both fleets train the small CNN (width 0.25) on IID shares of Fashion-MNIST's 60 000 images, 100 participants a
round, one round; the sampled one draws each phone's memory, FLOP/s and network from the list and jitters every task
(sigma 0.3), the other is `phone-midrange` throughout. Measured, alternating the two fleets in one sitting:
- validate: `python -m msfusion_ray validate` in-process (config check, data, fleet, partitions, capacities, the
  spread table and the participant listing; its output discarded);
- start: from `run_prepared` to the run's first step (host actors started with their participants' specs and ready);
- run: the whole one-round run (first round and evaluation included).

    .venv/bin/python benchmarks/sampled_fleet.py                      # 10 000 participants, 3 repeats
    .venv/bin/python benchmarks/sampled_fleet.py --size 1000 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load, median, ray_session, report  # noqa: E402
from msfusion_ray.app.launching import run_prepared  # noqa: E402
from msfusion_ray.cli import main as cli  # noqa: E402
from msfusion_ray.experiment.config_check import config_from_dict  # noqa: E402
from msfusion_ray.experiment.prepare import prepare  # noqa: E402

FLEETS = {
    "one profile": {"devices": {"phone-midrange": 1}},
    "sampled phones": {"sample": {"source": "phones", "size": 1}, "jitter": 0.3},
}


def config_dict(fleet: str, size: int, output_dir: str) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(FLEETS[fleet]))
    if "devices" in spec:
        spec["devices"] = {"phone-midrange": size}
    else:
        spec["sample"]["size"] = size
    return {
        "name": "sampled-fleet" if "sample" in spec else "one-profile", "rounds": 1, "seed": 0,
        "data": {"dataset": "fashion_mnist", "partition": "iid", "eval_samples": 500,
                 "min_samples_per_participant": 4},
        "model": {"name": "cnn", "width": 0.25},
        "fleet": {**spec, "memory_scale": 1.0, "sample_fraction": min(1.0, 100 / size)},
        "strategy": {"name": "fedavg"},
        "training": {"local_steps": 1, "batch_size": 16, "lr": 0.05},
        "output_dir": output_dir,
    }


def measure(fleet: str, size: int, scratch: Path) -> dict:
    data = config_dict(fleet, size, str(scratch))
    path = scratch / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    load_before = load()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as shown:
        assert cli(["validate", str(path)]) == 0
    validate_s = time.perf_counter() - started
    prepared = prepare(config_from_dict(data))
    launched = time.time()
    timing = run_prepared(prepared, show_progress=False).summary["timing"]
    return {"fleet": fleet, "participants": size, "validate_s": validate_s,
            "start_s": timing["steps"][0] - launched if timing["steps"] else float("nan"),
            "run_s": timing["finished"] - launched, "validate_lines": shown.getvalue().count("\n"),
            "load_before": load_before, "load_after": load()}


def summarise(runs: list[dict]) -> list[dict]:
    table = []
    for fleet in FLEETS:
        mine = [r for r in runs if r["fleet"] == fleet]
        loads = [r["load_before"] for r in mine] + [r["load_after"] for r in mine]
        table.append({"fleet": fleet, "participants": mine[0]["participants"], "repeats": len(mine),
                      **{key: median([r[key] for r in mine]) for key in ("validate_s", "start_s", "run_s")},
                      "load (min-max)": f"{min(loads):.1f}-{max(loads):.1f}"})
    base, sampled = table
    table.append({"fleet": "sampled / one profile", "participants": base["participants"], "repeats": "",
                  **{key: sampled[key] / base[key] for key in ("validate_s", "start_s", "run_s")},
                  "load (min-max)": ""})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch, ray_session():
        for repeat in range(args.repeats):
            for fleet in (FLEETS if repeat % 2 == 0 else reversed(FLEETS)):  # alternate which goes first
                runs.append(measure(fleet, args.size, Path(scratch)))
                print(f"repeat {repeat + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    table = summarise(runs)
    report("sampled_fleet", {"args": vars(args), "runs": runs, "medians": table}, table)


if __name__ == "__main__":
    main()
