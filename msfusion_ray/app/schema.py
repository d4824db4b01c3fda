"""The JSON Schema of the files a user writes: an experiment config, a sweep file, a tuning file (what an
editor's YAML support reads: `msfusion-ray schema`). Built from the same pydantic models that check them."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import TypeAdapter, create_model

from msfusion_ray.app.sweep_plan import SweepConfig
from msfusion_ray.app.tuning import TuneConfig
from msfusion_ray.experiment.config_check import experiment_model
from msfusion_ray.validation import model_of


def json_schema(kind: Literal["any", "experiment", "sweep", "tuning"] = "any") -> dict[str, Any]:
    """The JSON Schema of an experiment config, a sweep file, a tuning file, or any of them."""
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
