"""Launching a prepared experiment: the run directory, the cluster, the driver actor, and progress."""

from __future__ import annotations

import math
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from msfusion_ray.code_refs import job_runtime_env
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.experiment import Prepared
from msfusion_ray.tracking import follow_rounds


class RunFailed(Exception):
    """The run started but did not finish; its records so far stay in the run directory."""


def new_run_dir(prepared: Prepared) -> tuple[Path, str]:
    """Create runs/<name>-<time>-<tag>/ with the resolved config and the data set's artifacts (e.g. a tokenizer)
    in it; called only after every check passed."""
    config = prepared.config
    run_id = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = Path(config.output_dir) / run_id
    write_run_dir(prepared, run_dir)
    return run_dir, run_id


def write_run_dir(prepared: Prepared, run_dir: Path) -> None:
    """Make `run_dir` (a new directory) hold the resolved config and the data set's artifacts."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(prepared.config.to_yaml())
    for name, text in prepared.data.artifacts.items():
        (run_dir / name).write_text(text)


class ProgressDisplay:
    """A progress bar on a terminal; otherwise one line whenever the count moves (logs, CI)."""

    def __init__(self, total: int, unit: str, enabled: bool, label: str = ""):
        from tqdm import tqdm

        self.enabled = enabled
        self.label = label
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True) if self.interactive else None
        self.total = total
        self.last = 0

    def update(self, done: int, postfix: dict[str, Any], force: bool = False) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()
        elif self.enabled and (done > self.last or force):
            details = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.label}{done}/{self.total} {details}".rstrip(), file=sys.stderr, flush=True)
        self.last = done

    def note(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def round_postfix(progress: dict[str, Any]) -> dict[str, Any]:
    """What a run's progress line shows besides the step: the virtual time, the last evaluation (perplexity for a
    language model, else accuracy) and the step's outcomes."""
    accuracy, perplexity = progress.get("accuracy"), progress.get("perplexity")
    shown = {"vt": f"{progress['vt']:.1f}s"} if progress.get("vt") is not None else {}
    if perplexity is not None and math.isfinite(perplexity):
        shown["ppl"] = f"{perplexity:.2f}"
    elif accuracy is not None and math.isfinite(accuracy):
        shown["acc"] = f"{accuracy:.3f}"
    else:
        return shown
    return {**shown, "ok": progress.get("ok"), "oom": progress.get("oom")}


class RunHandle:
    """A run whose driver actor is working in the cluster; polled without blocking, so that one process can
    watch several runs at once (a sweep)."""

    def __init__(self, prepared: Prepared, run_dir: Path, run_id: str, resume: bool = False,
                 data_ref: Any = None):
        import ray

        from msfusion_ray.runtime.driver import start_driver

        self.rounds = prepared.config.rounds
        if data_ref is None:
            data_ref = ray.put(prepared.data)
        self.driver = start_driver(prepared.config, data_ref, run_dir, run_id, resume)
        self.finished = self.driver.run.remote()
        self.progress: dict[str, Any] = {"round": 0}
        self._asked = self.driver.progress.remote()

    def poll_progress(self) -> dict[str, Any]:
        """The latest progress the driver reported; asks again once the previous answer is in."""
        import ray
        from ray.exceptions import RayError

        ready, _ = ray.wait([self._asked], timeout=0)
        if ready:
            try:
                self.progress = ray.get(self._asked, timeout=60)
            except RayError:
                pass  # the driver is gone or busy dying; its result says why
            self._asked = self.driver.progress.remote()
        return self.progress

    def result(self) -> dict[str, Any]:
        """The run's summary once `finished` is ready; `RunFailed` with the root cause otherwise."""
        import ray
        from ray.exceptions import RayError

        try:
            return ray.get(self.finished, timeout=60)
        except RayError as err:
            raise RunFailed(_root_cause(err)) from None

    def stop(self) -> None:
        import ray

        ray.kill(self.driver)


def execute(prepared: Prepared, run_dir: Path, run_id: str, resume: bool = False,
            show_progress: bool = True) -> dict[str, Any]:
    """Run a prepared experiment on the configured Ray cluster; returns the run's summary."""
    import ray

    from msfusion_ray.runtime.cluster import ray_cluster

    config = prepared.config
    with ray_cluster(config.runtime, job_runtime_env(code_named(config))):
        handle = RunHandle(prepared, run_dir, run_id, resume)
        tracker = follow_rounds(config, run_dir, run_id)
        progress = ProgressDisplay(config.rounds, "round", show_progress, label="round ")
        status = "failed"
        try:
            while True:
                done, _ = ray.wait([handle.finished], timeout=0.5)
                state = handle.poll_progress()
                progress.update(state.get("round", progress.last), round_postfix(state))
                if tracker is not None:
                    tracker.poll()
                if done:
                    summary = handle.result()
                    status = "complete"
                    return summary
        finally:
            progress.close()
            handle.stop()
            if tracker is not None:
                tracker.finish(status)


def code_named(config: ExperimentConfig) -> list[str]:
    """The config fields that may name the user's code (shipped with the job to the cluster's nodes)."""
    return [config.model.name, config.data.dataset]


def _root_cause(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
