"""Launching a prepared experiment: the run directory, the cluster, the driver actor, and progress."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path
from typing import Any

from msfusion_ray.experiment import Prepared


class RunFailed(Exception):
    """The run started but did not finish; its records so far stay in the run directory."""


def new_run_dir(prepared: Prepared) -> tuple[Path, str]:
    """Create runs/<name>-<time>-<tag>/ with the resolved config and the data set's artifacts (e.g. a tokenizer)
    in it; called only after every check passed."""
    config = prepared.config
    run_id = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = Path(config.output_dir) / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    for name, text in prepared.data.artifacts.items():
        (run_dir / name).write_text(text)
    return run_dir, run_id


class _Progress:
    """A progress bar on a terminal; one line per finished round otherwise (logs, CI)."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="round", file=sys.stderr, dynamic_ncols=True) if self.interactive else None
        self.total = total
        self.last = 0

    def update(self, progress: dict[str, Any]) -> None:
        done = progress.get("round", self.last)
        postfix = {}
        if progress.get("accuracy") is not None:
            postfix = {"acc": f"{progress['accuracy']:.3f}", "ok": progress.get("ok"), "oom": progress.get("oom")}
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()
        elif self.enabled and done > self.last:
            details = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"round {done}/{self.total} {details}", file=sys.stderr, flush=True)
        self.last = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def execute(prepared: Prepared, run_dir: Path, run_id: str, resume: bool = False,
            show_progress: bool = True) -> dict[str, Any]:
    """Run a prepared experiment on the configured Ray cluster; returns the run's summary."""
    import ray
    from ray.exceptions import RayError

    from msfusion_ray.runtime.cluster import ray_cluster
    from msfusion_ray.runtime.driver import start_driver

    config = prepared.config
    with ray_cluster(config.runtime):
        data_ref = ray.put(prepared.data)
        driver = start_driver(config, data_ref, run_dir, run_id, resume)
        finished = driver.run.remote()
        progress = _Progress(config.rounds, show_progress)
        try:
            while True:
                done, _ = ray.wait([finished], timeout=0.5)
                try:
                    progress.update(ray.get(driver.progress.remote(), timeout=60))
                except RayError:
                    pass
                if done:
                    return ray.get(finished, timeout=60)
        except RayError as err:
            raise RunFailed(_root_cause(err)) from None
        finally:
            progress.close()
            ray.kill(driver)


def _root_cause(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
