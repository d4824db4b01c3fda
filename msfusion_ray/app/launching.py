"""The launch and watch steps of the lifecycle (msfusion_ray.app.lifecycle): the run's directory made once every
check passed, the cluster started (or joined), the driver and hosts launched and the run watched, its driver
started again if its process dies, and how it ended recorded. Ray's own lines go to the run's log from the moment
the cluster starts (msfusion_ray.app.ray_session)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ray.exceptions import RayError

from msfusion_ray.app.ray_session import ClusterSession, RayLines
from msfusion_ray.app.request import CheckedRun, code_named
from msfusion_ray.app.run_dir import RunDirectory, new_run_id
from msfusion_ray.app.run_handle import KEPT, watch_with_restarts
from msfusion_ray.app.stops import RunFailed, RunInterrupted, interruption, stop_signals
from msfusion_ray.code_refs import job_runtime_env
from msfusion_ray.config import ExperimentConfig, RuntimeConfig
from msfusion_ray.errors import ClusterStartError, WriteFailed
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.runtime.failure_texts import describe_failure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    config: ExperimentConfig  # what it ran with
    summary: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.run_dir.name


class Launcher:
    """Where runs are launched from: the cluster (started when `start_cluster` is called, or by the first launch)
    and Ray's lines routed to the run's log, both ended when it is. `exiting`: the process ends right after (the
    command line), so an embedded cluster whose processes die with it is left to end with it."""

    def __init__(self, exiting: bool = False):
        self.lines = RayLines()
        self.cluster = ClusterSession(exiting)

    def __enter__(self) -> "Launcher":
        self.lines.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.close()
        self.lines.__exit__(*exc)

    def start_cluster(self, runtime: RuntimeConfig, configs: list[ExperimentConfig],
                      device_classes: Sequence[str] = ()) -> None:
        """Start (or join) the cluster `runtime` describes, for runs of `configs`: the user's code they name goes
        with the job to the cluster's nodes; a joined cluster must have a node for each of `device_classes`."""
        self.cluster.start(runtime, job_runtime_env([ref for config in configs for ref in code_named(config)]),
                           device_classes)

    def launch(self, shipment: Shipment, run_dir: RunDirectory, resume: bool, show_progress: bool = True
               ) -> dict[str, Any]:
        """Launch and watch a prepared run in its directory; its summary. A run that fails raises `RunFailed` (one
        line; the full text in run.log), one stopped by Ctrl-C or SIGTERM `RunInterrupted`, after its summary
        says so; either carries the run's directory."""
        handler = run_dir.log_handler()
        self.lines.to(handler)
        base = run_dir.base_summary(shipment.config, shipment.strategy_name, "running")
        try:
            try:
                self.start_cluster(shipment.config.runtime, [shipment.config], shipment.fleet.class_names())
                with stop_signals():
                    return watch_with_restarts(shipment, run_dir, resume, show_progress, handler)
            except (KeyboardInterrupt, SystemExit) as err:
                stop = interruption(err)
                if stop is None:
                    raise
                if not stop.recorded:  # stopped while the cluster or a driver started (`watch` records the rest)
                    log.warning("run interrupted: %s", stop.reason)
                    run_dir.set_status("interrupted", stop.reason, base)
                raise _with_run_dir(stop, run_dir) from None
            except (RayError, ClusterStartError) as err:  # the cluster failed under the run, or did not start
                reason = describe_failure(err, "the run") if isinstance(err, RayError) else str(err)
                log.error("run failed: %s\n%s", reason, err)
                run_dir.set_status("failed", reason, base)
                raise _with_run_dir(RunFailed(reason), run_dir) from None
            except WriteFailed as err:  # the run's summary could not be written (a full disk): it stops there
                reason = f"{err} ({KEPT})"
                log.error("run failed: %s", reason)
                with contextlib.suppress(WriteFailed):
                    run_dir.set_status("failed", reason, base)
                raise _with_run_dir(RunFailed(reason), run_dir) from None
            except RunFailed as err:
                raise _with_run_dir(err, run_dir)
        finally:
            handler.close()


def open_run_dir(checked: CheckedRun, shipment: Shipment, overrides: tuple[str, ...] = ()) -> RunDirectory:
    """The run's directory once every check passed: a new one (output_dir/<name>-<time>-<tag>), or the resumed
    run's with its config changed by `overrides` (e.g. more rounds)."""
    config = shipment.config
    if checked.resumed is None:
        run_id = new_run_id(config)
        return RunDirectory.create(Path(config.output_dir) / run_id, run_id, config, shipment.strategy_name,
                                   shipment.artifacts)
    run_dir = RunDirectory.existing(checked.resumed)
    if overrides:
        run_dir.write_config(config)
    return run_dir


def _with_run_dir(err: RunFailed | RunInterrupted, run_dir: RunDirectory) -> RunFailed | RunInterrupted:
    err.run_dir = run_dir.path
    return err


def run_prepared(experiment: Any, *, resume: Path | None = None, show_progress: bool = True) -> FinishedRun:
    """Launch and watch an experiment prepared by the caller (tests and benchmarks that prepare it themselves);
    `resume`: the directory of the run it continues."""
    shipment = Shipment.of(experiment)
    with Launcher() as launcher:
        run_dir = open_run_dir(CheckedRun(shipment.config, resume), shipment)
        summary = launcher.launch(shipment, run_dir, resume is not None, show_progress)
        return FinishedRun(run_dir.path, shipment.config, summary)
