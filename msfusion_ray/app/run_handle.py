"""A launched run: its driver and host actors working in the cluster, watched from the launcher's process.

A `RunHandle` is polled without blocking, so that one process can watch several runs at once (a sweep). It keeps
the run's summary.json (msfusion_ray.app.run_dir: the one writer) as the driver reports its rounds, and records
how the run ended: complete, `failed` with the reason (one line; the full text in run.log), or `interrupted`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from msfusion_ray.app.progress import ProgressDisplay, round_postfix
from msfusion_ray.app.run_dir import RunDirectory
from msfusion_ray.app.stops import DriverDied, RunFailed, interruption
from msfusion_ray.app.tracking import RoundFollower, follow_rounds
from msfusion_ray.errors import UserInputError, WriteFailed
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.runtime.actor_classes import ByReference, DriverActor
from msfusion_ray.runtime.failure_texts import describe_failure
from msfusion_ray.runtime.host_pool import HostPool

log = logging.getLogger(__name__)
KEPT = "its last complete checkpoint is kept: free space, then resume"


def start_driver(shipment: Shipment, data_ref: ray.ObjectRef, hosts: HostPool, run_dir: RunDirectory,
                 resume: bool) -> ActorHandle:
    """The driver actor, on this node (where the run directory is), given the experiment without its data, the
    data by reference (it travels once, shared with the hosts), and the `HostPool` started beside it."""
    here = ray.get_runtime_context().get_node_id()
    return DriverActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(
        ByReference(ray.put(shipment.experiment)), ByReference(data_ref), hosts, str(run_dir.path), run_dir.run_id,
        resume)


class RunHandle:
    """A run whose driver actor is working in the cluster; polled without blocking. It writes the run's log, and
    its summary as the driver reports it."""

    def __init__(self, shipment: Shipment, run_dir: RunDirectory, resume: bool = False, data_ref: Any = None,
                 log_handler: logging.Handler | None = None):
        config = shipment.config
        self.run_dir = run_dir
        self.rounds = config.rounds
        self.base_summary = run_dir.base_summary(config, shipment.strategy_name, "running")
        self._own_handler = log_handler is None
        self.log_handler = run_dir.log_handler() if log_handler is None else log_handler
        self.log = logging.getLogger(f"msfusion_ray.runs.{run_dir.run_id}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self.log_handler)
        self.log.info("%s %s: %d rounds, %d participants", "resuming" if resume else "starting", run_dir.run_id,
                      self.rounds, len(shipment.fleet))
        if data_ref is None:
            data_ref = ray.put(shipment.data)
        # The host actors and the driver actor start side by side (each imports torch and fetches the data); the
        # driver waits for the hosts only when its runner needs them.
        self.hosts = HostPool(shipment, data_ref, run_dir.run_id)
        if self.hosts.enforced is not None:  # which hosts ran at once, under what quotas and limits
            run_dir.write_enforcement(self.hosts.enforced.describe())
        self.driver = start_driver(shipment, data_ref, self.hosts, run_dir, resume)
        self.finished = self.driver.run.remote()
        self._pid = self.driver.pid.remote()
        self.progress: dict[str, Any] = {"round": 0}
        self._summarised = -1  # the round of the last summary written
        self._ended = False  # its final summary is written: what the driver still reports is no news
        self._asked = self.driver.progress.remote(self._summarised)

    def _take(self, progress: dict[str, Any]) -> None:
        summary = progress.pop("summary", None)
        if summary is not None and not self._ended:
            self.run_dir.write_summary({**self.base_summary, **summary})
            self._summarised = progress["round"]
        self.progress = progress

    def poll_progress(self) -> dict[str, Any]:
        """The latest progress the driver reported (its summary written when a round was added); asks again once
        the previous answer is in."""
        ready, _ = ray.wait([self._asked], timeout=0)
        if ready:
            with contextlib.suppress(RayError):  # the driver is gone or busy dying; its result says why
                self._take(ray.get(self._asked, timeout=60))
            self._asked = self.driver.progress.remote(self._summarised)
        return self.progress

    def last_progress(self) -> dict[str, Any]:
        """The driver's progress now (after its run ended: that of the last round), its summary written."""
        with contextlib.suppress(RayError):
            self._take(ray.get(self.driver.progress.remote(self._summarised), timeout=30))
        return self.progress

    def result(self) -> dict[str, Any]:
        """The run's summary once `finished` is ready, written. Otherwise the failure in one line:
        `UserInputError` if the driver refused its input (a checkpoint it cannot trust), `DriverDied` if its
        process died (the run can go on from its checkpoint), else `RunFailed`, the summary then saying `failed`
        and why; the full text goes to run.log."""
        try:
            summary = ray.get(self.finished, timeout=60)
        except RayError as err:
            cause = err.cause if isinstance(err, RayTaskError) else None
            if isinstance(cause, UserInputError):
                self.fail(f"{cause.where}: {cause.message}", err)
                raise UserInputError(cause.where, cause.message) from None
            if isinstance(cause, WriteFailed):  # a full disk: the run stops, its last complete checkpoint kept
                self.fail(str(cause), err)
                raise RunFailed(f"{cause} ({KEPT})") from None
            reason = describe_failure(err, "the driver actor")
            died = isinstance(err, RayActorError) and not err.actor_init_failed and not isinstance(err, RayTaskError)
            if isinstance(err, OutOfMemoryError) or died:  # not a failure the driver raised (a host's, say)
                self.log.error("driver died: %s\n%s", reason, err)
                raise DriverDied(reason) from None
            self.fail(reason, err)
            raise RunFailed(reason) from None
        summary = {**self.base_summary, **summary}
        self.run_dir.write_summary(summary)
        self._ended = True
        self.log.info("complete: %s rounds", summary.get("rounds_completed"))
        return summary

    def fail(self, reason: str, err: BaseException | None = None) -> None:
        """Record a failure: one line in the summary (the driver's last, where it still answers), the full text
        in the run's log."""
        self.log.error("run failed: %s%s", reason, f"\n{err}" if err is not None else "")
        with contextlib.suppress(WriteFailed):  # a full disk: the failure to report is the one that stopped it
            self.last_progress()
        self._ended = True
        with contextlib.suppress(WriteFailed):
            self.run_dir.set_status("failed", reason, self.base_summary)

    def interrupt(self, reason: str) -> None:
        """Stop the driver, waiting until it is gone (so that its run writes nothing more), and record why."""
        import psutil

        pid = None
        with contextlib.suppress(RayError):
            pid = ray.get(self._pid, timeout=5)
        ray.kill(self.driver, no_restart=True)
        with contextlib.suppress(RayError):
            ray.get(self.finished, timeout=30)
        if pid is not None:  # Ray fails the driver's task at once; its process may still write for a moment
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=30)
        self.log.warning("run interrupted: %s", reason)
        self._ended = True
        self.run_dir.set_status("interrupted", reason, self.base_summary)

    def stop(self) -> None:
        """End the driver and the hosts (the driver's runner ends them when it finishes; not if it failed)."""
        ray.kill(self.driver)
        self.hosts.shutdown()
        self.log.removeHandler(self.log_handler)
        if self._own_handler:
            self.log_handler.close()


def watch(handle: RunHandle, progress: ProgressDisplay, tracker: RoundFollower | None = None) -> dict[str, Any]:
    """Show a run's progress (and hand its new rounds to the tracker) until it ends; its summary, or its failure
    (see `RunHandle.result`)."""
    try:
        while True:
            done, _ = ray.wait([handle.finished], timeout=0.5)
            state = handle.poll_progress()
            progress.update(max(state.get("round", 0), progress.last), round_postfix(state))
            if tracker is not None:
                tracker.poll()
            if done:
                summary = handle.result()
                progress.update(summary.get("rounds_completed", progress.last), round_postfix(handle.last_progress()))
                return summary
    except KeyboardInterrupt as err:
        stop = interruption(err)
        handle.interrupt(stop.reason)
        stop.recorded = True
        raise stop from None
    finally:
        handle.stop()


def watch_with_restarts(shipment: Shipment, run_dir: RunDirectory, resume: bool, show_progress: bool,
                        handler: logging.Handler) -> dict[str, Any]:
    """Launch and watch a run, and start the driver again from the last checkpoint if its process dies (killed,
    crashed, its node lost), up to runtime.max_driver_restarts times; then the run fails in one line. The
    checkpoint is checked against the records and the config before each restart, as for `run --resume`."""
    budget = shipment.config.runtime.max_driver_restarts
    progress = ProgressDisplay(shipment.config.rounds, "round", show_progress, label="round ")
    tracker = follow_rounds(shipment.config, run_dir.path, run_dir.run_id)
    status = "failed"
    try:
        for restart in itertools.count():
            handle = RunHandle(shipment, run_dir, resume or restart > 0, log_handler=handler)
            try:
                summary = watch(handle, progress, tracker)
                status = "complete"
                return summary
            except DriverDied as died:
                if restart >= budget:
                    reason = f"{died}; restarted {restart} times (runtime.max_driver_restarts={budget})"
                    run_dir.set_status("failed", reason, handle.base_summary)
                    raise RunFailed(reason) from None
                note = f"{died}; starting it again from {restart_point(shipment, run_dir)} (restart {restart + 1} " \
                       f"of {budget})"
                log.warning(note)
                progress.note(note)
        raise AssertionError("unreachable")
    finally:
        progress.close()
        if tracker is not None:
            tracker.finish(status)


def restart_point(shipment: Shipment, run_dir: RunDirectory) -> str:
    """Where a run whose driver died goes on from, its checkpoint checked as for `run --resume` (with the
    experiment whole: where it was prepared in another process, this is the moment this one imports torch)."""
    from msfusion_ray.runtime.checkpoint import check_resume  # torch: only once a driver died

    checkpoint = check_resume(run_dir.path, shipment.opened())
    return f"the checkpoint of round {checkpoint.round}" if checkpoint is not None else "the start"
