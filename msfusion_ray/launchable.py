"""What a run's launcher holds of a prepared experiment, and preparing one in a process of its own.

The launcher (the command line, a sweep, `msfusion_ray.run`) writes the run directory, puts the experiment in the
object store and starts the driver and host actors; only they train. `Launchable` is what it needs for that: the
config, the fleet and its partitions, the strategy's name and the data set's artifacts, with the data and the rest
of the prepared experiment either as they are or `Packed`. The command line prepares in a child process and gets
those two back packed: pickled, their classes (which import torch) loaded only where a driver or a host opens
them, their arrays out of band (into the object store zero-copy, as before). So its own process never imports
torch: one torch process fewer for the length of the run (on the FedAvg workload of benchmarks/flower.py the
command line held 500 MB resident of the run's 2.8 GB, 280 MB of it torch and what preparing left).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from ray import cloudpickle

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.devices.fleet import Fleet

if TYPE_CHECKING:
    from msfusion_ray.experiment import Prepared
    from msfusion_ray.shards import Shards


@dataclass
class Packed:
    """An object pickled with its arrays out of band, opened where its classes may be imported."""

    pickled: bytes
    buffers: list[np.ndarray]  # the arrays' memory, as bytes (zero-copy views where they came from the store)

    @classmethod
    def of(cls, value: Any) -> "Packed":
        buffers: list[pickle.PickleBuffer] = []
        pickled = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        return cls(pickled, [np.frombuffer(buffer.raw(), dtype=np.uint8) for buffer in buffers])

    def open(self) -> Any:
        return pickle.loads(self.pickled, buffers=self.buffers)


def opened(value: Any) -> Any:
    """A `Packed` object opened; anything else as it is."""
    return value.open() if isinstance(value, Packed) else value


@dataclass
class Launchable:
    config: ExperimentConfig
    strategy_name: str
    fleet: Fleet
    partitions: "Shards"
    artifacts: dict[str, str]  # the data set's files a run directory keeps (e.g. a tokenizer)
    data: Any  # the DataBundle, or Packed
    family: Any  # the model family (all a host needs besides the data and its participants), or Packed
    rest: Any  # the Prepared without its data (`data=None`, for the driver), or Packed

    @classmethod
    def of(cls, prepared: "Prepared | Launchable") -> "Launchable":
        if isinstance(prepared, Launchable):
            return prepared
        return cls(prepared.config, prepared.strategy.name, prepared.fleet, prepared.partitions,
                   dict(prepared.data.artifacts), prepared.data, prepared.family,
                   dataclasses.replace(prepared, data=None))

    def prepared(self) -> "Prepared":
        """The experiment whole (where it was packed, this imports torch)."""
        return dataclasses.replace(opened(self.rest), data=opened(self.data))


def launchable_of(prepared: "Prepared") -> Launchable:
    """The launcher's view of an experiment prepared in another process: the data and the rest packed."""
    plain = Launchable.of(prepared)
    return dataclasses.replace(plain, data=Packed.of(plain.data), family=Packed.of(plain.family),
                               rest=Packed.of(plain.rest))


class PreparingApart:
    """`job(note)` run in a child process of its own (a fresh interpreter; `job` must pickle, by reference or by
    value), talking back over a pipe: whatever it passes to `note` as it goes, then what it returns, a Prepared,
    sent back as a `Launchable` (`launchable_of`). A `UserInputError` it raises is raised here as it was; Ctrl-C
    is this process's to handle (the child ignores it and is ended with this object)."""

    def __init__(self, job: Callable[[Callable[[Any], None]], "Prepared"]):
        read, write = os.pipe()
        self._child = subprocess.Popen(
            [sys.executable, "-c", f"from msfusion_ray.launchable import _child; _child({write})"],
            stdin=subprocess.PIPE, pass_fds=(write,))
        os.close(write)
        self._answers = os.fdopen(read, "rb")
        self._child.stdin.write(cloudpickle.dumps(job))
        self._child.stdin.close()

    def note(self) -> Any:
        """The job's next note (waits for it)."""
        return self._next("note")

    def result(self) -> Launchable:
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

    def __enter__(self) -> "PreparingApart":
        return self

    def __exit__(self, *exc: object) -> None:
        self._answers.close()
        if self._child.poll() is None:
            self._child.kill()
        self._child.wait()


def _child(answer_fd: int) -> None:
    """The child's side of `PreparingApart`."""
    import traceback

    from msfusion_ray.errors import UserInputError

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    job = pickle.loads(sys.stdin.buffer.read())
    with os.fdopen(answer_fd, "wb") as answers:
        def send(kind: str, value: Any) -> None:
            pickle.dump((kind, value), answers, protocol=5)
            answers.flush()

        try:
            prepared = job(lambda value: send("note", value))
            send("done", launchable_of(prepared))
        except UserInputError as err:
            send("error", err)
        except Exception:  # noqa: BLE001  (a bug: its text goes back whole)
            send("failed", traceback.format_exc())
