"""The synchronous engine keeps the schemes' results: the first rounds of each scheme as they were before the
engine contract (measured on the round loop it replaced), the same with 1, 2 and 4 hosts."""

import copy

import numpy as np
import pytest

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows
from tests.conftest import SMALL_CONFIG
from tests.runtime.fake_hosts import engine_for

# Test accuracy and loss after rounds 1 and 2, SMALL_CONFIG at memory_scale 0.0007 (rates 0.875, 0.875, 0.375),
# measured with the round loop of commit 7531c6f (before engines were a contract). MSfusion's were measured again
# after issue 14's two fixes (the input batch counted once in the footprint, which raises its rates from 0.75 to
# 0.8125 here; the model shift over trainable parameters, which sets round 2's overlap): with both fixes undone its
# rounds match 7531c6f's (0.145, 0.075). Measured again after issue 25's fixes to MSfusion's contrastive loss (the
# frozen copies normalise with the batch's statistics; the `previous` negative is the last local model realigned to
# this round's window); before them: (0.25, 0.24), losses (2.4195, 2.4963). All in torch's default memory layout (`model.memory_format: contiguous`):
# channels last, the default since, computes the same network to rounding, not bit for bit.
PINNED = {
    "heterofl": ([0.26, 0.235], [2.236278772354126, 2.115842342376709]),
    "fedrolex": ([0.26, 0.275], [2.236278772354126, 2.182487726211548]),
    "fed_dropout": ([0.11, 0.305], [2.493380546569824, 2.541445732116699]),
    "msfusion": ([0.125, 0.4], [2.383356819152832, 2.449243621826172]),
    "small_fedavg": ([0.1, 0.155], [2.2051901817321777, 2.062592029571533]),
}


def run(config_dict, strategy, hosts, tmp_path, memory_format="auto"):
    data = copy.deepcopy(config_dict)
    data.update(output_dir=str(tmp_path / f"{strategy}-{hosts}"), strategy={"name": strategy})
    data["model"] = {**data.get("model", {}), "memory_format": memory_format}
    data["fleet"]["memory_scale"] = 0.0007
    data["runtime"]["hosts"] = hosts
    prepared = prepare(config_from_dict(data))
    run_dir = run_prepared(prepared, show_progress=False).run_dir
    return read_round_rows(run_dir), read_participant_rows(run_dir)


@pytest.mark.parametrize("strategy", sorted(PINNED))
def test_first_rounds_match_the_round_loop_they_replaced(ray_session, tmp_path, strategy):
    rounds, participants = run(SMALL_CONFIG, strategy, 2, tmp_path, memory_format="contiguous")
    accuracy, loss = PINNED[strategy]
    assert rounds["test_accuracy"].tolist() == accuracy
    assert np.allclose(rounds["test_loss"], loss, rtol=1e-6, atol=0)
    assert (participants["status"] == "ok").all()


def test_a_run_is_identical_whatever_the_number_of_hosts(ray_session, tmp_path):
    runs = [run(SMALL_CONFIG, "fed_dropout", hosts, tmp_path) for hosts in (1, 2, 4)]
    for rounds, participants in runs[1:]:
        assert rounds["test_loss"].tolist() == runs[0][0]["test_loss"].tolist()
        for column in ("flops", "bytes_down", "bytes_up", "vt_start", "vt_end", "device_clock_s", "task"):
            assert participants[column].tolist() == runs[0][1][column].tolist(), column


def test_a_device_that_goes_off_during_a_round_loses_its_work(profiles_dir, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("participant,start_s,end_s\n0,0,100\n1,0,2.5\n2,3,100\n")
    engine = engine_for(profiles_dir, "fedavg", {}, {0: 1.0, 1: 3.0, 2: 1.0}, rounds=2,
                        fleet_extra={"availability": "trace", "availability_trace": str(trace)})
    first, second = list(engine.steps(1))
    assert [r.status for r in first.rows] == ["ok", "dropped", "unavailable"]
    assert first.rows[1].vt_end == 2.5 and first.vt_end == 2.5  # the round ends when its last device stops
    assert [r.status for r in second.rows] == ["ok", "unavailable", "unavailable"]  # participant 2 is on from 3 s
    assert engine.consumed_tasks() == {0: second.rows[0].task}  # only aggregated work advances its state
