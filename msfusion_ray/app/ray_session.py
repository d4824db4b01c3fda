"""The Ray session the lifecycle runs in, and where Ray's own lines go: to the run's log, never the terminal.

Ray talks from the moment it starts (its start-up notes and warnings, through Python's logging) and later pushes
the failure texts of its workers to the process that started the cluster. While a `RayLines` is open, all of it,
the tool's own log and Python's warnings go to one handler: held in memory until the run's directory exists
(nothing is written before every check passed), then into its run.log. The user sees one line when a run fails;
run.log keeps the full text.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from logging.handlers import MemoryHandler
from typing import Any, Sequence

import ray  # Ray sets up its own logger when imported: `RayLines` replaces its handlers, then restores them

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.runtime.cluster import end_cluster, start_cluster
from msfusion_ray.runtime.ray_private import disable_failure_signal_handler, route_worker_lines


class RayLines:
    """Ray's lines, the tool's log and Python's warnings, routed to one handler while open (held in memory until
    `to(handler)` gives their file)."""

    def __init__(self) -> None:
        self.target: logging.Handler = MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        self._ours, self._ray, self._warnings = (logging.getLogger("msfusion_ray"), logging.getLogger("ray"),
                                                 logging.getLogger("py.warnings"))
        self._saved: tuple[list[logging.Handler], int] = ([], logging.NOTSET)
        self._restore_prints = None

    def __enter__(self) -> "RayLines":
        self._saved = (self._ray.handlers[:], self._ours.level)
        self._ours.setLevel(logging.INFO)
        for logger in (self._ours, self._warnings):
            logger.addHandler(self.target)
        self._ray.handlers = [self.target]
        logging.captureWarnings(True)
        self._restore_prints = route_worker_lines(self._print)
        return self

    def _print(self, data: dict[str, Any]) -> None:
        for line in data.get("lines", ()):
            self._ray.warning("(%s) %s", data.get("pid", "ray"), line)

    def to(self, handler: logging.Handler) -> None:
        """From now on into `handler` (the run's log), with what was held so far."""
        held = self.target
        for logger in (self._ours, self._warnings):
            logger.removeHandler(held)
            logger.addHandler(handler)
        self._ray.handlers = [handler]
        if isinstance(held, MemoryHandler):
            for record in held.buffer:
                handler.handle(record)
            held.buffer.clear()
        self.target = handler

    def __exit__(self, *exc: object) -> None:
        if self._restore_prints is not None:
            self._restore_prints()
        logging.captureWarnings(False)
        handlers, level = self._saved
        self._ray.handlers = handlers
        for logger in (self._ours, self._warnings):
            logger.removeHandler(self.target)
        self._ours.setLevel(level)


class ClusterSession:
    """The cluster a lifecycle runs on: the Ray session already open in this process, one joined at
    `runtime.address`, or an embedded one, started when `start` is called (beside the expensive part of
    preparing, or just before launching) and ended by `close` (never `ray stop`). `exiting`: the process ends
    right after (the command line), so an embedded cluster whose processes the kernel ends with this one is left
    to end with it (`ray.shutdown()` stops them one at a time, waiting up to a second for each)."""

    def __init__(self, exiting: bool = False):
        self.exiting = exiting
        self.started = False
        self._stack = ExitStack()

    def start(self, runtime: RuntimeConfig, runtime_env: dict[str, Any] | None,
              device_classes: Sequence[str] = ()) -> None:
        """`device_classes`: the fleet's, which a joined cluster must have nodes for (`join_cluster`)."""
        if self.started or ray.is_initialized():
            return
        disable_failure_signal_handler()
        start_cluster(runtime, runtime_env, device_classes)
        self.started = True

    def close(self) -> None:
        if self.started:
            end_cluster(self.exiting)
        self.started = False

    def __enter__(self) -> "ClusterSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
