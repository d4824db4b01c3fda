"""Configs run on the GPU, measured: participant tasks per second, GPU memory (each task's allocator peak, the GPU's
use as NVML saw it) and utilisation, hosts per GPU. What benchmarks/gpu.sh reports:

    python benchmarks/gpu.py configs/quickstart.yaml configs/scale_1000.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, measured_run, ray_session, report  # noqa: E402
from msfusion_ray.experiment.config_check import load_config  # noqa: E402
from msfusion_ray.experiment.prepare import prepare  # noqa: E402
from msfusion_ray.records import read_host_rows, read_participant_rows, read_round_rows  # noqa: E402

MIB = 2**20


def gpu_figures(run_dir: Path) -> dict[str, float | str | int]:
    """The run's GPU figures from its records (per task and per host and step)."""
    rounds, tasks, hosts = read_round_rows(run_dir), read_participant_rows(run_dir), read_host_rows(run_dir)
    ran = tasks[tasks["task"] >= 0]
    sampled = hosts[hosts["gpu_samples"] > 0] if len(hosts) else hosts
    samples = float(sampled["gpu_samples"].sum()) if len(sampled) else 0.0
    rounds_wall_s = float(rounds["wall_round_s"].sum())
    return {
        "device": ",".join(sorted(set(hosts["device"]))) if len(hosts) else "cpu",
        "gpu": ",".join(sorted(set(hosts["gpu_name"]))) if len(hosts) else "",
        "hosts_per_gpu": int(hosts["hosts_on_gpu"].max()) if len(hosts) else 0,
        "gpu_fraction": float(hosts["gpu_fraction"].max()) if len(hosts) else 0.0,
        "tasks": len(ran), "tasks_ok": int((ran["status"] == "ok").sum()),
        "tasks_per_s": len(ran) / rounds_wall_s if rounds_wall_s else float("nan"),
        "task_peak_gpu_mib": float(ran["mem_peak_gpu_bytes"].max()) / MIB if len(ran) else 0.0,
        "gpu_used_max_mib": float(sampled["gpu_used_max_bytes"].max()) / MIB if samples else float("nan"),
        "gpu_total_mib": float(sampled["gpu_total_bytes"].max()) / MIB if samples else float("nan"),
        "gpu_util_mean_pct": float((sampled["gpu_util_mean_pct"] * sampled["gpu_samples"]).sum() / samples)
        if samples else float("nan"),
        "gpu_util_max_pct": float(sampled["gpu_util_max_pct"].max()) if samples else float("nan"),
        "rounds_wall_s": rounds_wall_s,
    }


def gpu_machine() -> dict[str, object]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(count)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch, ray_session():
        for path in args.configs:
            prepared = prepare(load_config(path, [*args.set, f"output_dir={scratch}"]))
            run = measured_run(prepared)
            summary = run["summary"]
            results.append({"config": path, "participants": summary["participants"], "hosts": summary["hosts"],
                            "rounds": summary["rounds_completed"], **gpu_figures(run["run_dir"]),
                            "final_accuracy": summary["final_accuracy"], "run_wall_s": run["run_wall_s"]})
    report("gpu", {"results": results}, results, machine_info={**machine(), **gpu_machine()})


if __name__ == "__main__":
    main()
