"""The run's own log (runs/<id>/run.log): its warnings and errors, in full, where the terminal shows one line.

The launcher's process (msfusion_ray.app) and the driver actor, on the same node, both append to it: the launcher
what it saw of the run and of Ray (its start-up lines, the failure texts its raylet pushes), the driver what it
saw of the hosts (a host replaced, an evaluation resent).
"""

from __future__ import annotations

import logging
from pathlib import Path

RUN_LOG = "run.log"


class RunLogHandler(logging.FileHandler):
    """A file handler that drops a record it cannot write (a full disk) without a word: the run reports the
    failure that stopped it in one line, not a traceback per log line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        pass


def run_log_handler(run_dir: Path, name: str = RUN_LOG) -> logging.Handler:
    """A handler appending to the run's log (`name` in `run_dir`)."""
    handler = RunLogHandler(Path(run_dir) / name, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    return handler
