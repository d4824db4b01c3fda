"""The experiment config: one YAML file, one typed section per component, strict validation.

Unknown fields, wrong types and out-of-range values are rejected with the dotted field name. This module declares
the config and checks its structure; it knows no strategy. The strategies' parameters, and the names that refer to
registries (data set, model, strategy, device profiles), are checked in msfusion_ray.experiment, where those
registries are at hand.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import yaml

from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml, parse_yaml, set_dotted
from msfusion_ray.paths import anchor_paths
from msfusion_ray.validation import checked, fraction, model_of, non_negative, positive, to_dataclass, validate

# Seeds go to numpy's generators and torch's; numpy's legacy seeding takes 0 .. 2**32 - 1.
SEED_LIMIT = 2**32
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_name(value: str) -> str | None:
    """A name that becomes a directory name: letters, digits, '.', '_', '-' (no '/', no '..', no spaces)."""
    if _SAFE_NAME.fullmatch(value) and ".." not in value:
        return None
    return (f"must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit and without "
            f"'..' (got {value!r})")


def seed_range(value: int) -> str | None:
    return None if 0 <= value < SEED_LIMIT else f"must be in [0, {SEED_LIMIT - 1}] (got {value})"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"
    data_dir: str | None = None  # default: where the data set's package installs it
    # play, speaker: shakespeare's groups; sampled: each participant draws samples_per_participant at random (shares
    # may overlap: a fleet larger than its data set)
    partition: Literal["iid", "dirichlet", "play", "speaker", "sampled"] = "dirichlet"
    alpha: float = checked(0.5, check=positive)  # Dirichlet concentration: small = strong label skew
    train_samples: int | None = checked(None, check=positive)  # seeded subset of the training split
    eval_samples: int | None = checked(None, check=positive)  # seeded subset of each evaluation split
    # a seeded hold-out of the training split, evaluated as the validation split (image data sets, which have none)
    validation_samples: int | None = checked(None, check=positive)
    pad_to: int | None = checked(None, check=positive)  # pad images to pad_to x pad_to (28 -> 32)
    normalize: bool = True  # images: scaled to [0, 1], then standardised per channel; false: pixels / 255 only
    min_samples_per_participant: int = checked(8, check=positive)
    samples_per_participant: int | None = checked(None, check=positive)  # sampled (default: min_samples_per_...)
    options: dict[str, Any] = field(default_factory=dict)  # data-set specific (e.g. the text's context length)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"
    width: float = checked(1.0, check=positive)  # width multiplier of the global model
    options: dict[str, Any] = field(default_factory=dict)  # family specific (e.g. a transformer's depth)
    # how 4-d weights and activations are laid out (msfusion_ray.models.base): auto is the family's own choice,
    # channels_last for the convolutional families (faster on CPU), contiguous as torch builds them
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"


@dataclass(frozen=True)
class SampleConfig:
    """A fleet drawn from a device list (msfusion_ray.devices.sources): a shipped source (phones) or a CSV."""

    source: str
    size: int = checked(check=positive)
    seed: int | None = checked(None, check=seed_range)  # which devices are drawn (default: the run's seed)
    replace: bool = True  # draw with replacement (a list may be smaller than the fleet)


@dataclass(frozen=True)
class FleetConfig:
    file: str | None = None  # a fleet scenario under device_profiles/fleets/
    devices: dict[str, int] | None = None  # or inline: profile name -> count
    device_list: str | None = None  # or a CSV of devices, one participant per row (msfusion_ray.devices.device_list)
    sample: SampleConfig | None = None  # or devices drawn from a list
    jitter: float | None = checked(None, check=non_negative)  # per-task speed and bandwidth sigma, every participant
    size: int | None = checked(None, check=positive)  # rescale the mix to this many participants
    memory_scale: float | None = checked(None, check=positive)  # overrides the fleet file's
    profiles_dir: str | None = None  # default: the project's device_profiles/
    sample_fraction: float = checked(1.0, check=fraction)  # share of the fleet asked to train each round
    compute_nodes: dict[str, int] | None = None  # pipeline split learning: overrides the fleet file's compute nodes
    aggregator: str | None = None  # pipeline split learning: overrides the fleet file's aggregator
    # when devices are reachable (msfusion_ray.devices.availability): a draw per round, on/off windows from the
    # profiles' on_mean_s/off_mean_s, windows read from a CSV trace, or the profiles' daily (diurnal) windows
    availability: Literal["per_round", "windows", "trace", "diurnal"] = "per_round"
    availability_trace: str | None = None


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)  # checked against the strategy's own Params


@dataclass(frozen=True)
class TrainingConfig:
    local_epochs: int = checked(1, check=positive)
    local_steps: int | None = checked(None, check=positive)  # if set, replaces local_epochs
    batch_size: int = checked(32, check=positive)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = checked(0.05, check=positive)
    momentum: float = checked(0.9, check=non_negative)
    weight_decay: float = checked(0.0, check=non_negative)
    lr_decay: float = checked(1.0, check=fraction)  # the learning rate is multiplied by this every round

    def optimizer_state_copies(self) -> int:
        """Copies of the parameters the optimizer keeps (for the memory footprint)."""
        if self.optimizer == "adam":
            return 2
        return 1 if self.momentum > 0 else 0


@dataclass(frozen=True)
class RuntimeConfig:
    address: str | None = None  # an existing Ray cluster; default: start an embedded local one
    num_cpus: int | None = checked(None, check=positive)  # CPUs of the embedded cluster (default: all)
    # host actors (default: one per threads_per_host of the run's CPUs, no more than participants or max_hosts)
    hosts: int | None = checked(None, check=positive)
    max_hosts: int | None = checked(None, check=positive)
    host_cpus: float | None = checked(None, check=positive)  # logical CPUs the hosts claim (default: 90% of all)
    threads_per_host: int = checked(1, check=positive)  # torch.set_num_threads inside each host
    clock: Literal["virtual", "real"] = "virtual"  # real: hosts sleep so wall time matches device time
    task_timeout_s: float = checked(900.0, check=positive)
    checkpoint_every: int = checked(1, check=positive)
    eval_every: int = checked(1, check=positive)
    # batches of the evaluation's forward passes: a speed setting (128 was faster on CPU than larger batches,
    # docs/benchmarks.md); the figures do not depend on it beyond float rounding
    eval_batch_size: int = checked(128, check=positive)
    eval_overlap: bool = True  # a step's evaluation runs on the hosts beside the next step (not with clock: real)
    bn_calibration_samples: int = checked(1000, check=non_negative)  # BatchNorm statistics recomputed before eval
    # batches of that recomputation: the statistics average per-batch figures, so this one changes results
    bn_calibration_batch_size: int = checked(500, check=positive)
    dashboard: bool = False
    object_store_mib: int = checked(1024, check=positive)
    device_resources: bool = False  # on a real cluster: place participants on nodes with resource device:<name>
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where hosts train (auto: cuda when the cluster has GPUs)
    gpus_per_host: float | None = checked(None, check=fraction)  # GPU each host asks for (default: an even share)
    max_host_restarts: int = checked(3, check=non_negative)  # host actors replaced after their process died, per run
    # on a cluster (`address`): how long a host no node can take (none offers its device class) waits for a node to
    # join, at the start and after its node was lost, before the run ends naming the class
    node_wait_s: float = checked(60.0, check=positive)
    max_driver_restarts: int = checked(2, check=non_negative)  # driver actors restarted from the last checkpoint
    # compute time from FLOPs and the profile's FLOP/s, or per operation where the profile was calibrated (roofline:
    # devices/time_model.py); a profile without a calibration is timed by its FLOP/s under either
    time_model: Literal["roofline", "flops"] = "roofline"
    # cgroups: each host in a control group of its own, its CPU quota and memory limit the device's (docs/emulation.md)
    enforce: Literal["virtual", "cgroups"] = "virtual"
    node_profile: str | None = None  # enforce: this node's calibration (default: the one `calibrate` kept for it)
    enforce_slowdown: float | None = checked(None, check=lambda v: None if v >= 1 else f"must be >= 1 (got {v})")
    memory_guard: Literal["planner", "kernel"] = "planner"  # enforce: kernel leaves every verdict to the limit
    # enforce: what the memory limit judges: the training process as glibc runs it (process), or its tensors (tensors:
    # freed tensors go back to the kernel at once, as the planner counts them; training runs slower, docs/emulation.md)
    enforce_memory: Literal["process", "tensors"] = "process"
    # what the planner holds against a memory cap: a task's process as `calibrate` measured it where a profile (or,
    # enforced with enforce_memory: process, the node's calibration) has a memory_need block (calibrated), or the
    # footprint alone (footprint: every result before 2026-12-08; docs/emulation.md)
    memory_plan: Literal["calibrated", "footprint"] = "calibrated"
    tracking: Literal["mlflow", "tensorboard"] | None = None  # each round's row and the config (msfusion_ray.tracking)
    tracking_uri: str | None = None  # mlflow: the store (default sqlite:///mlflow.db); tensorboard: the event directory


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = checked(check=safe_name)  # the run directory is output_dir/<name>-<time>-<tag>
    rounds: int = checked(check=positive)  # steps: synchronous rounds, aggregations, or pipeline epochs
    time_budget_s: float | None = checked(None, check=positive)  # ... or stop once this much virtual time has passed
    seed: int = checked(0, check=seed_range)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output_dir: str = "runs"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` with a YAML value (so numbers, booleans, lists and null work)."""
    if "=" not in text:
        raise UserInputError(f"--set {text}", "expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw, f"--set {key}") if raw else ""
    except UserInputError as err:
        raise UserInputError(f"--set {key}", f"cannot parse value {_shortened(raw)!r}: {err.message}") from None
    return key.strip(), value


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def resolved_dict(data: dict[str, Any], overrides: Sequence[str] = (),
                  config_dir: str | Path | None = None) -> dict[str, Any]:
    """A raw config overridden and anchored (the files it names: msfusion_ray.paths, relative to the current
    directory, then `config_dir`, then the bundled files), not yet validated."""
    if not isinstance(data, dict):
        raise UserInputError("config", f"must be a mapping, not {type(data).__name__}")
    data = copy.deepcopy(data)
    for text in overrides:
        set_dotted(data, *parse_override(text))
    return anchor_paths(data, config_dir)


def checked_structure(data: dict[str, Any], overrides: Sequence[str] = (), where: str = "",
                      config_dir: str | Path | None = None) -> ExperimentConfig:
    """Override, anchor (`resolved_dict`) and check a config in every field but the strategy's parameters, which
    only the strategy's class can check (msfusion_ray.experiment.config_check checks the whole; this check needs
    nothing but the declarations above, so it answers in a fraction of a second)."""
    return finished(to_dataclass(validate(model_of(ExperimentConfig), resolved_dict(data, overrides, config_dir),
                                          where)), where)


def finished(config: ExperimentConfig, where: str) -> ExperimentConfig:
    """The checks across fields, after every field checked alone."""
    given = [key for key in FLEET_SOURCES if getattr(config.fleet, key) is not None]
    if not given or (len(given) > 1 and {"device_list", "sample"} & set(given)):
        raise UserInputError(f"{where}.fleet" if where else "fleet",
                             f"give one of {', '.join(FLEET_SOURCES)} (got {', '.join(given) or 'none'})")
    return config


FLEET_SOURCES = ("file", "devices", "device_list", "sample")


def read_config_file(path: str | Path, overrides: Sequence[str], check: Callable[..., ExperimentConfig]
                     ) -> ExperimentConfig:
    """Read an experiment config file and `check(data, overrides, config_dir=...)` it; errors name the file and
    the field."""
    try:
        return check(load_yaml(path), overrides, config_dir=Path(path).parent)
    except UserInputError as err:
        if err.where.startswith(str(path)) or err.where.startswith("--set"):
            raise
        raise UserInputError(f"{path}: {err.where}", err.message) from None
