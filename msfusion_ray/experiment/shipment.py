"""What a run's launcher holds of an experiment: the parts it reads itself, and the parts it only ships.

The launcher (msfusion_ray.app: the command line, a sweep, `msfusion_ray.run`) writes the run directory, puts the
experiment in the object store and starts the driver and host actors; only they train. A `Shipment` is what it
needs for that: the config, the fleet and its partitions, the strategy's name and the data set's artifacts, which
it reads, and the data, the model family and the rest of the experiment, which it only ships, either as they are
or `Packed`. Where the experiment was prepared in a process of its own (msfusion_ray.app.apart), those three come
back packed: pickled, their classes (which import torch) loaded only where a driver or a host opens them, their
arrays out of band (into the object store zero-copy, as before). So the launcher's process never imports torch:
one torch process fewer for the length of the run (on the FedAvg workload of benchmarks/flower.py the command line
held 500 MB resident of the run's 2.8 GB, 280 MB of it torch and what preparing left).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import cloudpickle

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.devices.fleet import Fleet
from msfusion_ray.shards import Shards

if TYPE_CHECKING:  # the launcher's process holds no torch: the experiment's classes are named, not imported
    from msfusion_ray.experiment.prepare import Experiment


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
class Shipment:
    config: ExperimentConfig
    strategy_name: str
    fleet: Fleet
    partitions: Shards
    artifacts: dict[str, str]  # the data set's files a run directory keeps (e.g. a tokenizer)
    data: Any  # the DataBundle, or Packed
    family: Any  # the model family (all a host needs besides the data and its participants), or Packed
    experiment: Any  # the Experiment without its data (`data=None`, for the driver), or Packed

    @classmethod
    def of(cls, experiment: "Experiment | Shipment") -> "Shipment":
        """An experiment as it is, unpacked (prepared in this process)."""
        if isinstance(experiment, Shipment):
            return experiment
        return cls(experiment.config, experiment.strategy.name, experiment.fleet, experiment.partitions,
                   dict(experiment.data.artifacts), experiment.data, experiment.family,
                   dataclasses.replace(experiment, data=None))

    @classmethod
    def packed(cls, experiment: "Experiment") -> "Shipment":
        """An experiment prepared in another process, as its launcher gets it: the data and the rest packed."""
        plain = cls.of(experiment)
        return dataclasses.replace(plain, data=Packed.of(plain.data), family=Packed.of(plain.family),
                                   experiment=Packed.of(plain.experiment))

    def with_config(self, config: ExperimentConfig) -> "Shipment":
        """The same experiment under a config that differs in how it is run (a sweep's share of the cluster)."""
        if isinstance(self.experiment, Packed):
            raise ValueError("a packed experiment keeps the config it was prepared with")
        return dataclasses.replace(self, config=config, experiment=dataclasses.replace(self.experiment,
                                                                                        config=config))

    def opened(self) -> "Experiment":
        """The experiment whole (where it was packed, this imports torch)."""
        return dataclasses.replace(opened(self.experiment), data=opened(self.data))
