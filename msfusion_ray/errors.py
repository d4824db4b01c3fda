"""The exception types the CLI reports in one line: the user's input is wrong (exit code 2), the machine could
not start the embedded cluster (exit code 1), or a run's file could not be written (exit code 1). Everything else
is a bug or an outage.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator


class UserInputError(Exception):
    """Bad input (config, profile, fleet, data path): names the field or file it is about."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # rebuilt from both parts in another process (an actor)
        return type(self), (self.where, self.message)


class ClusterStartError(RuntimeError):
    """The embedded Ray cluster did not start (or not on loopback): says why and what to do."""


class WriteFailed(Exception):
    """A file of the run (a checkpoint's, a round's records, the summary) could not be written: the disk is full,
    read-only, or over its quota. Names the file; the run stops there, its last complete checkpoint kept."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {path}: {reason}")

    def __reduce__(self):  # noqa: ANN204  (rebuilt from both parts when it crosses processes, e.g. from an actor)
        return type(self), (self.path, self.reason)


@contextmanager
def writing(path: str | Path, partial: tuple[str | Path, ...] = ()) -> Iterator[None]:
    """Turn a failed write of `path` into `WriteFailed` naming it, after removing `partial` (files or directories
    the failed write leaves half-written), so that a full disk leaves nothing half-written behind."""
    try:
        yield
    except (OSError, WriteFailed) as err:
        for leftover in map(Path, partial):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                with suppress(OSError):  # a read-only disk: whatever it holds stays as it was
                    leftover.unlink()
        if isinstance(err, WriteFailed):  # a file within `path` failed: it names that one
            raise
        raise WriteFailed(str(path), _reason(err)) from None


def _reason(err: OSError) -> str:
    """What the system said, e.g. "No space left on device" (pyarrow puts the errno in its message only)."""
    found = re.search(r"\[errno (\d+)\]", str(err), re.IGNORECASE)
    code = err.errno or (int(found.group(1)) if found else None)
    if code:
        return os.strerror(code)
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
