"""How a run ends when it does not complete: it failed (one line, the full text in run.log), or it was stopped from
outside (Ctrl-C, SIGTERM), winding down through the same path as Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Iterator


class RunFailed(Exception):
    """The run started but did not finish; its records so far stay in the run directory (`run_dir`, once the
    lifecycle knows it)."""

    run_dir: Path | None = None


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
        self.run_dir: Path | None = None


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM raises `RunInterrupted` in the main thread (as Ctrl-C raises KeyboardInterrupt), so a stopped run
    winds down through the same path. Entered after `ray.init`, which sets a SIGTERM handler of its own."""
    if threading.current_thread() is not threading.main_thread():
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
