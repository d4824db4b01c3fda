"""The experiment config: one YAML file, one typed section per component, strict validation.

Unknown fields, wrong types and out-of-range values are rejected with the dotted field name. Names that refer to
registries (data set, model, strategy, device profiles) are checked later, in `msfusion_ray.experiment.prepare`,
where those registries are at hand.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml, parse_yaml, set_dotted
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
    partition: Literal["iid", "dirichlet", "play", "speaker"] = "dirichlet"  # play, speaker: shakespeare's groups
    alpha: float = checked(0.5, check=positive)  # Dirichlet concentration: small = strong label skew
    train_samples: int | None = checked(None, check=positive)  # seeded subset of the training split
    eval_samples: int | None = checked(None, check=positive)  # seeded subset of each evaluation split
    # a seeded hold-out of the training split, evaluated as the validation split (image data sets, which have none)
    validation_samples: int | None = checked(None, check=positive)
    pad_to: int | None = checked(None, check=positive)  # pad images to pad_to x pad_to (28 -> 32)
    normalize: bool = True  # images: scaled to [0, 1], then standardised per channel; false: pixels / 255 only
    min_samples_per_participant: int = checked(8, check=positive)
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
class FleetConfig:
    file: str | None = None  # a fleet scenario under device_profiles/fleets/
    devices: dict[str, int] | None = None  # or inline: profile name -> count
    size: int | None = checked(None, check=positive)  # rescale the mix to this many participants
    memory_scale: float | None = checked(None, check=positive)  # overrides the fleet file's
    profiles_dir: str | None = None  # default: the project's device_profiles/
    sample_fraction: float = checked(1.0, check=fraction)  # share of the fleet asked to train each round
    compute_nodes: dict[str, int] | None = None  # pipeline split learning: overrides the fleet file's compute nodes
    aggregator: str | None = None  # pipeline split learning: overrides the fleet file's aggregator
    # when devices are reachable (msfusion_ray.devices.availability): a draw per round, on/off windows from the
    # profiles' on_mean_s/off_mean_s, or windows read from a CSV trace
    availability: Literal["per_round", "windows", "trace"] = "per_round"
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


def _with_default_strategy(value: Any) -> Any:
    return {"name": StrategyConfig.name, **value} if isinstance(value, dict) and "name" not in value else value


def strategy_model(name: str, params: type) -> type:
    """strategy: {name: <name>, params: <its Params>} as one member of the union on strategy.name."""
    from pydantic import Field, create_model

    from msfusion_ray.validation import STRICT

    member = create_model(f"Strategy_{name}", __config__=STRICT,
                          name=(Literal[name], ...), params=(model_of(params), Field(default_factory=params)))
    member.__convert__ = lambda m: StrategyConfig(
        m.name, m.params.model_dump(exclude_unset=True) if not dataclasses.is_dataclass(m.params) else {})
    return member


_EXPERIMENT_MODELS: dict[tuple[str, ...], type] = {}


def experiment_model() -> type:
    """The pydantic model of an experiment config, with strategy params checked in the same pass: a union of
    every registered strategy's section, discriminated by strategy.name."""
    from pydantic import BeforeValidator, Field, create_model

    from msfusion_ray.strategies import STRATEGIES

    names = tuple(STRATEGIES.names())
    if names not in _EXPERIMENT_MODELS:
        members = tuple(strategy_model(name, cls.Params) for name, cls in STRATEGIES.items())
        union = Annotated[Union[members] if len(members) > 1 else members[0], Field(discriminator="name"),
                          BeforeValidator(_with_default_strategy)]
        _EXPERIMENT_MODELS[names] = create_model(
            "ExperimentConfig", __base__=model_of(ExperimentConfig), __doc__=ExperimentConfig.__doc__,
            strategy=(union, Field(default_factory=StrategyConfig)))
        _EXPERIMENT_MODELS[names].__dataclass__ = ExperimentConfig
    return _EXPERIMENT_MODELS[names]


def resolved_dict(data: dict[str, Any], overrides: list[str] = (),
                  config_dir: str | Path | None = None) -> dict[str, Any]:
    """A raw config overridden and anchored (the files it names: msfusion_ray.paths, relative to the current
    directory, then `config_dir`, then the bundled files), not yet validated."""
    from msfusion_ray.paths import anchor_paths

    data = copy.deepcopy(data)
    for text in overrides:
        set_dotted(data, *parse_override(text))
    return anchor_paths(data, config_dir)


def config_from_dict(data: dict[str, Any], overrides: list[str] = (), where: str = "",
                     config_dir: str | Path | None = None) -> ExperimentConfig:
    """Override, anchor (`resolved_dict`) and validate a config."""
    data = resolved_dict(data, overrides, config_dir)
    config = to_dataclass(validate(experiment_model(), data, where))
    if config.fleet.file is None and config.fleet.devices is None:
        raise UserInputError(f"{where}.fleet" if where else "fleet", "give either 'file' or 'devices'")
    return config


def runtime_ahead(data: dict[str, Any], overrides: list[str] = (),
                  config_dir: str | Path | None = None) -> tuple[RuntimeConfig, list[Any]] | None:
    """A config's runtime section, and the fields that may name the user's code (model.name, data.dataset),
    resolved and checked alone: what starting its cluster needs, known before the whole config is checked (the
    strategies' parameters are checked by their classes, which import torch). None where they do not check: the
    whole config's check then says why."""
    try:
        data = resolved_dict(data, overrides, config_dir)
        runtime = to_dataclass(validate(model_of(RuntimeConfig), data.get("runtime") or {}, "runtime"))
    except (UserInputError, TypeError, ValueError, AttributeError):
        return None
    from msfusion_ray.paths import CODE_FIELDS

    return runtime, [(data.get(section) or {}).get(key) for section, key in CODE_FIELDS]


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment config; errors name the file and the field."""
    try:
        return config_from_dict(load_yaml(path), overrides, config_dir=Path(path).parent)
    except UserInputError as err:
        if err.where.startswith(str(path)) or err.where.startswith("--set"):
            raise
        raise UserInputError(f"{path}: {err.where}", err.message) from None


def json_schema(kind: Literal["any", "experiment", "sweep", "tuning"] = "any") -> dict[str, Any]:
    """The JSON Schema of an experiment config, a sweep file, a tuning file, or any of them (what an editor's YAML
    support reads)."""
    from pydantic import TypeAdapter, create_model

    from msfusion_ray.sweep import SweepConfig
    from msfusion_ray.tuning import TuneConfig

    experiment = experiment_model()
    sweep = create_model("SweepConfig", __base__=model_of(SweepConfig), __doc__=SweepConfig.__doc__,
                         base=(Union[experiment, str], ...))
    tuning = create_model("TuneConfig", __base__=model_of(TuneConfig), __doc__=TuneConfig.__doc__,
                          base=(Union[experiment, str], ...))
    target = {"experiment": experiment, "sweep": sweep, "tuning": tuning,
              "any": Union[experiment, sweep, tuning]}[kind]
    schema = TypeAdapter(target).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"msfusion_ray {'config' if kind == 'any' else kind}", **schema}
