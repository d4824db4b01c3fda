"""A participant row as its record holds it: every field in order and each metric as a column, as
`dataclasses.asdict` made it (the row is now read field by field)."""

import math
from dataclasses import asdict

from msfusion_ray.records import ParticipantRoundRow


def test_a_participant_row_flattens_to_its_fields_then_its_metrics():
    row = ParticipantRoundRow(run_id="r", round=3, participant=7, device="phone", host=1, status="ok", flops=12,
                              train_loss=0.5, message="m", metrics={"acc": 1, "kl": 0.25})
    row.param_fraction = 0.5  # set after it was made, as the engines do
    expected = asdict(row)
    expected.update({f"metric_{k}": float(v) for k, v in expected.pop("metrics").items()})
    flat = row.flat()
    assert list(flat) == list(expected)
    assert all(flat[k] == v or (math.isnan(flat[k]) and math.isnan(v)) for k, v in expected.items())
    assert flat["metric_acc"] == 1.0 and isinstance(flat["metric_acc"], float)
