"""Preparing a run in a process of its own, so that the launcher's process never imports torch.

The child is a fresh interpreter that imports the job by name (`module:function`), runs `job(*args, note)` and
talks back over a pipe: whatever the job passes to `note` as it goes, then what it returns, an `Experiment`, sent
back as a packed `Shipment` (msfusion_ray.experiment.shipment). A `UserInputError` it raises is raised here as it
was; Ctrl-C is this process's to handle (the child ignores it and is ended with this object).
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import subprocess
import sys
import traceback
from typing import Any

from msfusion_ray.errors import UserInputError


class PreparationProcess:
    """`job(*args, note)` run in a child process; `note()` waits for its next note, `result()` for its
    `Shipment`."""

    def __init__(self, job: str, *args: Any):
        read, write = os.pipe()
        self._child = subprocess.Popen(
            [sys.executable, "-c", f"from msfusion_ray.app.apart import _child; _child({write})"],
            stdin=subprocess.PIPE, pass_fds=(write,))
        os.close(write)
        self._answers = os.fdopen(read, "rb")
        self._child.stdin.write(pickle.dumps((job, args)))
        self._child.stdin.close()

    def note(self) -> Any:
        """The job's next note (waits for it)."""
        return self._next("note")

    def result(self) -> Any:
        """The job's result, a `Shipment` (msfusion_ray.experiment.shipment: this module does not import it, so
        that starting the child comes before this process imports Ray)."""
        return self._next("done")

    def _next(self, expected: str) -> Any:
        try:
            kind, value = pickle.load(self._answers)
        except EOFError:
            self._child.wait()
            raise RuntimeError(f"preparing the run in its own process ended with exit code {self._child.returncode}"
                               " before it answered") from None
        if kind == "error":
            raise value
        if kind == "failed":
            raise RuntimeError(f"preparing the run in its own process failed:\n{value}")
        assert kind == expected, (kind, expected)
        return value

    def __enter__(self) -> "PreparationProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self._answers.close()
        if self._child.poll() is None:
            self._child.kill()
        self._child.wait()


def _child(answer_fd: int) -> None:
    """The child's side of `PreparationProcess`."""
    from msfusion_ray.experiment.shipment import Shipment  # the child's: Ray and torch are its to import

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name, args = pickle.loads(sys.stdin.buffer.read())
    with os.fdopen(answer_fd, "wb") as answers:
        def send(kind: str, value: Any) -> None:
            pickle.dump((kind, value), answers, protocol=5)
            answers.flush()

        try:
            module, function = name.split(":")
            experiment = getattr(importlib.import_module(module), function)(*args, lambda value: send("note", value))
            send("done", Shipment.packed(experiment))
        except UserInputError as err:
            send("error", err)
        except Exception:  # noqa: BLE001  (a bug: its text goes back whole)
            send("failed", traceback.format_exc())
