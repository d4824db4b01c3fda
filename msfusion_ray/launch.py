"""Launching a prepared experiment: the run directory, the cluster, the driver actor, progress, and how a run
ends.

A run that fails or is stopped says so: its summary.json gets status `failed` or `interrupted` and the reason,
the user gets one line, and the run's own log (runs/<id>/run.log) keeps the full text of what went wrong. Ctrl-C
and SIGTERM stop a run cleanly: the driver actor is stopped, the summary written, the embedded cluster shut down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from msfusion_ray.code_refs import job_runtime_env
from msfusion_ray.config import ExperimentConfig, config_from_dict
from msfusion_ray.errors import UserInputError
from msfusion_ray.failures import describe_failure, open_run_log
from msfusion_ray.inputs import load_yaml
from msfusion_ray.launchable import Launchable
from msfusion_ray.tracking import RoundFollower, follow_rounds

if TYPE_CHECKING:  # the command line imports this module before it knows it will run anything (torch: seconds)
    from msfusion_ray.experiment import Prepared

SUMMARY = "summary.json"
log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run started but did not finish; its records so far stay in the run directory."""


class DriverDied(RunFailed):
    """The driver actor's process died (killed, crashed, stopped by Ray's memory monitor, its node lost; it raised
    nothing): the run can go on from its last checkpoint."""


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped from outside (Ctrl-C, SIGTERM); its checkpoint and records stay."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
        self.recorded = False  # whether the summary says so already


def check_output_dir(path: str | Path, where: str) -> None:
    """Refuse an output directory that cannot be written, before anything starts: `path`, or the nearest part of
    it that exists, must be a directory in which a directory can be made (tried, and removed at once)."""
    probe = Path(path)
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserInputError(where, f"{probe} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as err:
        raise UserInputError(where, f"cannot write in {probe} ({err.strerror})") from None


def write_atomic(path: Path, text: str) -> None:
    """Replace a file's text whole (a crash leaves the old text or the new, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_summary_status(run_dir: Path, status: str, reason: str, base: dict[str, Any] | None = None) -> None:
    """Set summary.json's status and its reason (a run that failed or was stopped says why); a run stopped before
    its first round gets a summary that says only that."""
    path = run_dir / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict):
        summary = {**(base or {}), "rounds_completed": 0, "history": []}
    summary.update(status=status, reason=reason)
    write_atomic(path, json.dumps(summary, indent=2))


@contextlib.contextmanager
def logging_to(handler: logging.Handler) -> Iterator[None]:
    """While a run goes on in this process: the tool's log, Python's warnings and Ray's own lines go to the run's
    log, not the terminal. Ray's lines are its start-up notes, and the failure texts its raylet pushes to the
    process that started the cluster ("A worker died or was killed ...", printed from a thread of Ray's own)."""
    import ray._private.worker as ray_worker  # Ray sets up its logger when imported; it is replaced, then restored

    ours, ray_logger, warnings_logger = logging.getLogger("msfusion_ray"), logging.getLogger("ray"), \
        logging.getLogger("py.warnings")
    saved_ray, saved_print = ray_logger.handlers[:], getattr(ray_worker, "print_to_stdstream", None)
    saved_level = ours.level
    ours.setLevel(logging.INFO)
    ours.addHandler(handler)
    warnings_logger.addHandler(handler)
    ray_logger.handlers = [handler]
    logging.captureWarnings(True)

    def to_run_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", ()):
            ray_logger.warning("(%s) %s", data.get("pid", "ray"), line)

    if saved_print is not None:
        ray_worker.print_to_stdstream = to_run_log
    try:
        yield
    finally:
        if saved_print is not None:
            ray_worker.print_to_stdstream = saved_print
        logging.captureWarnings(False)
        ray_logger.handlers = saved_ray
        warnings_logger.removeHandler(handler)
        ours.removeHandler(handler)
        ours.setLevel(saved_level)


def quiet_ray_crash_handler() -> None:
    """Before Ray starts in this process: leave Ray's C++ failure-signal handler out of it (the driver process
    only; Ray's workers keep theirs). It catches SIGTERM, prints a C++ stack dump and aborts the process, before
    any Python handler could stop the run cleanly."""
    import ray._private.ray_constants as ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM raises `RunInterrupted` in the main thread (as Ctrl-C raises KeyboardInterrupt), so a stopped run
    winds down through the same path. Entered after `ray.init`, which sets a SIGTERM handler of its own."""
    if not threading_is_main():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        _received.append(signum)
        raise RunInterrupted(*_STOPS[signal.SIGTERM])

    _received.clear()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Why a run stopped, by signal: the reason recorded and the exit code (128 + the signal's number, as a shell says).
_STOPS = {signal.SIGTERM: ("stopped by SIGTERM", 128 + signal.SIGTERM),
          signal.SIGINT: ("stopped by Ctrl-C (SIGINT)", 128 + signal.SIGINT)}
_received: list[int] = []  # SIGTERMs `stop_signals` caught: Ray turns an exception raised in a signal handler
# while it waits into a plain KeyboardInterrupt, so the handler's own exception cannot be relied on to arrive


def interruption(err: BaseException) -> RunInterrupted | None:
    """The stop that `err` is: a KeyboardInterrupt (Ctrl-C, or SIGTERM as `stop_signals` raises it), or the
    SystemExit of Ray's own SIGTERM handler (in place while Ray starts); None for any other exit."""
    if isinstance(err, RunInterrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return RunInterrupted(*_STOPS[signal.SIGTERM if _received else signal.SIGINT])
    if isinstance(err, SystemExit) and err.code == signal.SIGTERM:
        return RunInterrupted(*_STOPS[signal.SIGTERM])
    return None


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def new_run_dir(prepared: Prepared | Launchable) -> tuple[Path, str]:
    """Create runs/<name>-<time>-<tag>/ with the resolved config and the data set's artifacts (e.g. a tokenizer)
    in it; called only after every check passed."""
    config = prepared.config
    run_id = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = Path(config.output_dir) / run_id
    write_run_dir(prepared, run_dir)
    return run_dir, run_id


def write_run_dir(prepared: Prepared | Launchable, run_dir: Path) -> None:
    """Make `run_dir` (a new directory) hold the resolved config and the data set's artifacts."""
    launchable = Launchable.of(prepared)
    run_dir.mkdir(parents=True)
    write_atomic(run_dir / "config.yaml", launchable.config.to_yaml())
    for name, text in launchable.artifacts.items():
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
    watch several runs at once (a sweep). It writes the run's log, and the summary's status when the run fails
    or is stopped."""

    def __init__(self, prepared: Prepared | Launchable, run_dir: Path, run_id: str, resume: bool = False,
                 data_ref: Any = None, log_handler: logging.Handler | None = None):
        import ray

        from msfusion_ray.runtime.actors import start_driver
        from msfusion_ray.runtime.hosts import HostPool

        prepared = Launchable.of(prepared)
        self.run_dir = Path(run_dir)
        self.rounds = prepared.config.rounds
        self.base_summary = {"run_id": run_id, "name": prepared.config.name, "strategy": prepared.strategy_name,
                             "rounds": self.rounds}
        self._own_handler = log_handler is None
        self.log_handler = open_run_log(self.run_dir) if log_handler is None else log_handler
        self.log = logging.getLogger(f"msfusion_ray.runs.{run_id}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self.log_handler)
        self.log.info("%s %s: %d rounds, %d participants", "resuming" if resume else "starting", run_id,
                      self.rounds, len(prepared.fleet))
        if data_ref is None:
            data_ref = ray.put(prepared.data)
        # The host actors and the driver actor start side by side (each imports torch and fetches the data); the
        # driver waits for the hosts only when its runner needs them.
        self.hosts = HostPool(prepared, data_ref, run_id)
        if self.hosts.enforced is not None:  # which hosts ran at once, under what quotas and limits
            write_atomic(self.run_dir / "enforcement.json", json.dumps(self.hosts.enforced.describe(), indent=2))
        self.driver = start_driver(prepared.rest, data_ref, self.hosts, run_dir, run_id, resume)
        self.finished = self.driver.run.remote()
        self._pid = self.driver.pid.remote()
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

    def last_progress(self) -> dict[str, Any]:
        """The driver's progress now (after its run ended: that of the last round)."""
        import ray
        from ray.exceptions import RayError

        with contextlib.suppress(RayError):
            self.progress = ray.get(self.driver.progress.remote(), timeout=30)
        return self.progress

    def result(self) -> dict[str, Any]:
        """The run's summary once `finished` is ready. Otherwise the failure in one line: `UserInputError` if the
        driver refused its input (a checkpoint it cannot trust), `DriverDied` if its process died (the run can
        go on from its checkpoint), else `RunFailed`, the summary then saying `failed` and why; the full text goes
        to run.log."""
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError, RayError, RayTaskError

        try:
            summary = ray.get(self.finished, timeout=60)
        except RayError as err:
            cause = err.cause if isinstance(err, RayTaskError) else None
            if isinstance(cause, UserInputError):
                self.fail(f"{cause.where}: {cause.message}", err)
                raise UserInputError(cause.where, cause.message) from None
            reason = describe_failure(err, "the driver actor")
            if isinstance(err, OutOfMemoryError) or isinstance(err, RayActorError) and not err.actor_init_failed:
                self.log.error("driver died: %s\n%s", reason, err)
                raise DriverDied(reason) from None
            self.fail(reason, err)
            raise RunFailed(reason) from None
        self.log.info("complete: %s rounds", summary.get("rounds_completed"))
        return summary

    def fail(self, reason: str, err: BaseException | None = None) -> None:
        """Record a failure: one line in the summary, the full text in the run's log."""
        self.log.error("run failed: %s%s", reason, f"\n{err}" if err is not None else "")
        write_summary_status(self.run_dir, "failed", reason, self.base_summary)

    def interrupt(self, reason: str) -> None:
        """Stop the driver, waiting until it is gone (so that it writes nothing more), and record why."""
        import psutil
        import ray
        from ray.exceptions import RayError

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
        write_summary_status(self.run_dir, "interrupted", reason, self.base_summary)

    def stop(self) -> None:
        """End the driver and the hosts (the driver's runner ends them when it finishes; not if it failed)."""
        import ray

        ray.kill(self.driver)
        self.hosts.shutdown()
        self.log.removeHandler(self.log_handler)
        if self._own_handler:
            self.log_handler.close()


def watch(handle: RunHandle, progress: ProgressDisplay, tracker: RoundFollower | None = None) -> dict[str, Any]:
    """Show a run's progress (and hand its new rounds to the tracker) until it ends; its summary, or its failure
    (see `RunHandle.result`)."""
    import ray

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


def run_with_restarts(prepared: Launchable, run_dir: Path, run_id: str, resume: bool, show_progress: bool,
                      handler: logging.Handler) -> dict[str, Any]:
    """Run, and start the driver again from the last checkpoint if its process dies (killed, crashed, its node
    lost), up to runtime.max_driver_restarts times; then the run fails in one line. The checkpoint is checked
    against the records and the config before each restart, as for `run --resume` (with the experiment whole:
    where it was prepared apart, this process then imports torch)."""
    budget = prepared.config.runtime.max_driver_restarts
    progress = ProgressDisplay(prepared.config.rounds, "round", show_progress, label="round ")
    tracker = follow_rounds(prepared.config, run_dir, run_id)
    status = "failed"
    try:
        for restart in itertools.count():
            handle = RunHandle(prepared, run_dir, run_id, resume or restart > 0, log_handler=handler)
            try:
                summary = watch(handle, progress, tracker)
                status = "complete"
                return summary
            except DriverDied as died:
                if restart >= budget:
                    reason = f"{died}; restarted {restart} times (runtime.max_driver_restarts={budget})"
                    write_summary_status(run_dir, "failed", reason, handle.base_summary)
                    raise RunFailed(reason) from None
                from msfusion_ray.runtime.checkpoint import check_resume

                checkpoint = check_resume(run_dir, prepared.prepared())
                where = f"the checkpoint of round {checkpoint.round}" if checkpoint is not None else "the start"
                note = f"{died}; starting it again from {where} (restart {restart + 1} of {budget})"
                log.warning(note)
                progress.note(note)
        raise AssertionError("unreachable")
    finally:
        progress.close()
        if tracker is not None:
            tracker.finish(status)


def execute(prepared: Prepared | Launchable, run_dir: Path, run_id: str, resume: bool = False,
            show_progress: bool = True, exiting: bool = False) -> dict[str, Any]:
    """Run a prepared experiment on the configured Ray cluster; returns the run's summary. A driver whose process
    dies is started again from the last checkpoint (`run_with_restarts`). A run that fails raises `RunFailed` (one
    line; the full text in run.log), one stopped by Ctrl-C or SIGTERM `RunInterrupted`, after its summary says
    so. `exiting`: the process ends right after (see `ray_cluster`)."""
    from ray.exceptions import RayError

    from msfusion_ray.runtime.cluster import ray_cluster

    prepared = Launchable.of(prepared)
    config = prepared.config
    base = {"run_id": run_id, "name": config.name, "strategy": prepared.strategy_name, "rounds": config.rounds}
    handler = open_run_log(run_dir)
    quiet_ray_crash_handler()
    try:
        with logging_to(handler):
            try:
                with ray_cluster(config.runtime, job_runtime_env(code_named(config)), exiting=exiting), \
                        stop_signals():
                    return run_with_restarts(prepared, run_dir, run_id, resume, show_progress, handler)
            except (KeyboardInterrupt, SystemExit) as err:
                stop = interruption(err)
                if stop is None:
                    raise
                if not stop.recorded:  # stopped while the cluster or a driver started (`watch` records the rest)
                    log.warning("run interrupted: %s", stop.reason)
                    write_summary_status(run_dir, "interrupted", stop.reason, base)
                raise stop from None
            except RayError as err:  # the cluster failed under the run, or the driver could not be started
                reason = describe_failure(err, "the run")
                log.error("run failed: %s\n%s", reason, err)
                write_summary_status(run_dir, "failed", reason, base)
                raise RunFailed(reason) from None
    finally:
        handler.close()


def code_named(config: ExperimentConfig) -> list[str]:
    """The config fields that may name the user's code (shipped with the job to the cluster's nodes)."""
    from msfusion_ray.paths import CODE_FIELDS

    return [getattr(getattr(config, section), key) for section, key in CODE_FIELDS]


def prepare_checked(config: ExperimentConfig, resumed: Path | None = None) -> Prepared:
    """The experiment prepared (every check of the input), and for a resumed run (`resumed`, its directory) its
    checkpoint checked against its records and config."""
    from msfusion_ray.experiment import prepare
    from msfusion_ray.runtime.checkpoint import check_resume

    prepared = prepare(config)
    if resumed is not None:
        check_resume(resumed, prepared)
    return prepared


def run_config(config: ExperimentConfig | None, resume: str | Path | None = None, overrides: Sequence[str] = (),
               address: str | None = None) -> tuple[ExperimentConfig, Path | None]:
    """The run's config (`config`, or the one recorded in the run directory `resume`, with `overrides`), its output
    directory checked writable, `address` set; and the directory of the run it resumes (None: a new run)."""
    resumed = None
    if resume is not None:
        resumed = Path(resume)
        if not (resumed / "config.yaml").is_file():
            raise UserInputError(str(resumed), "not a run directory (no config.yaml)")
        config = config_from_dict(load_yaml(resumed / "config.yaml"), overrides, where=str(resumed))
        check_output_dir(resumed, str(resumed))
    else:
        check_output_dir(config.output_dir, "output_dir")
    if address:
        config = config_from_dict(config.to_dict(), [f"runtime.address={address}"])
    return config, resumed


def open_run_dir(prepared: Prepared | Launchable, resumed: Path | None,
                 overrides: Sequence[str] = ()) -> tuple[Path, str]:
    """The run's directory once every check passed: a new one, or the resumed run's with its config changed by
    `overrides` (e.g. more rounds)."""
    if resumed is None:
        return new_run_dir(prepared)
    if overrides:
        write_atomic(resumed / "config.yaml", prepared.config.to_yaml())
    return resumed, resumed.name


def open_run(config: ExperimentConfig | None, resume: str | Path | None = None, overrides: Sequence[str] = (),
             address: str | None = None) -> tuple[Prepared, Path, str]:
    """Everything before a run starts, for `msfusion_ray.run` (the command line does the same in two processes:
    msfusion_ray.cli.prepare_beside_cluster): the config (`run_config`), the experiment prepared and for a resumed
    run its checkpoint checked (`prepare_checked`); only then is anything written (`open_run_dir`)."""
    config, resumed = run_config(config, resume, overrides, address)
    prepared = prepare_checked(config, resumed)
    return (prepared, *open_run_dir(prepared, resumed, overrides))
