"""The epoch schedule on virtual time against hand-computed event times, and against EdgeSys'25's closed form."""

import pytest

from msfusion_ray.pipeline.schedule import schedule_epoch
from msfusion_ray.pipeline.time_model import OwnerTimes, PipelineTimes, StageTimes, edgesys_estimate


def _owner(batches, **times):
    base = dict(front_forward_s=0.0, front_backward_s=0.0, back_s=0.0, to_first_s=0.0, from_last_s=0.0,
                to_last_s=0.0, from_first_s=0.0)
    return OwnerTimes(batches=batches, **{**base, **times})


HAND = dict(front_forward_s=1.0, to_first_s=0.5, from_last_s=0.5, back_s=1.0, to_last_s=0.5, from_first_s=0.5,
            front_backward_s=1.0)


def _hand_case():
    """Two owners, one batch each, two compute nodes (forward 2 and 1 s, backward 3 and 2 s), 0.25 s hops."""
    return PipelineTimes(owners=(_owner(1, **HAND), _owner(1, **HAND)),
                         stages=(StageTimes(2.0, 3.0), StageTimes(1.0, 2.0)),
                         hops_forward_s=(0.25,), hops_backward_s=(0.25,))


def test_two_owners_two_nodes_match_the_hand_computed_schedule():
    schedule = schedule_epoch(_hand_case())
    spans = {(t.actor, t.index, t.owner, t.kind): (t.ready_s, t.start_s, t.end_s) for t in schedule.tasks}
    # both owners reach node 0 at 1.5; owner 0 goes first (lower id), owner 1 waits for it
    assert spans["node", 0, 0, "forward"] == (1.5, 1.5, 3.5)
    assert spans["node", 0, 1, "forward"] == (1.5, 3.5, 5.5)
    assert spans["node", 1, 0, "forward"] == (3.75, 3.75, 4.75)
    assert spans["owner", 0, 0, "back"] == (5.25, 5.25, 6.25)
    assert spans["node", 1, 1, "forward"] == (5.75, 5.75, 6.75)
    assert spans["node", 1, 0, "backward"] == (6.75, 6.75, 8.75)
    assert spans["owner", 1, 1, "back"] == (7.25, 7.25, 8.25)
    assert spans["node", 1, 1, "backward"] == (8.75, 8.75, 10.75)
    assert spans["node", 0, 0, "backward"] == (9.0, 9.0, 12.0)
    assert spans["node", 0, 1, "backward"] == (11.0, 12.0, 15.0)  # queued behind owner 0's backward
    assert spans["owner", 0, 0, "front_backward"] == (12.5, 12.5, 13.5)
    assert spans["owner", 1, 1, "front_backward"] == (15.5, 15.5, 16.5)
    assert schedule.owner_done_s == [13.5, 16.5] and schedule.epoch_s == 16.5
    assert schedule.node_busy_s == [10.0, 6.0] and schedule.node_idle_s(1) == 10.5


def test_the_closed_form_of_the_hand_case():
    estimate = edgesys_estimate(_hand_case())
    assert (estimate.start_s, estimate.pipe_empty_s, estimate.pipe_full_s, estimate.end_s) == (1.5, 8.0, 5.0, 1.5)
    assert estimate.epoch_s == 1.5 + 8.0 + (2 - 1) * 5.0 + 1.5
    # what the closed form leaves out here: the hops between nodes (0.5 s), and the contention of the second
    # owner's backward with the first's at node 0, minus its overlap of the last parts
    assert schedule_epoch(_hand_case()).epoch_s - estimate.epoch_s == 0.5


def test_one_hop_with_a_busy_node_is_exactly_the_closed_form():
    """Two owners, two batches each, owners' own work hidden behind the node's: the node never waits, so the epoch
    is startT + r B K (fwd + bwd) + endT."""
    owners = tuple(_owner(2, front_forward_s=0.5, front_backward_s=0.5) for _ in range(2))
    times = PipelineTimes(owners=owners, stages=(StageTimes(1.0, 1.0),))
    schedule = schedule_epoch(times)
    estimate = edgesys_estimate(times)
    assert estimate.one_hop and estimate.epoch_s == 0.5 + 4 * 2.0 + 0.5
    assert schedule.epoch_s == estimate.epoch_s == 9.0
    assert schedule.node_busy_s == [8.0]


def test_one_batch_through_many_hops_is_the_closed_form():
    owner = _owner(1, front_forward_s=1.0, to_first_s=0.5, from_first_s=0.25, front_backward_s=2.0)
    stages = (StageTimes(1.0, 2.0), StageTimes(3.0, 1.0), StageTimes(0.5, 0.5))
    times = PipelineTimes(owners=(owner,), stages=stages, hops_forward_s=(0.0, 0.0), hops_backward_s=(0.0, 0.0))
    assert schedule_epoch(times).epoch_s == edgesys_estimate(times).epoch_s == 1.5 + 8.0 + 2.25


def test_a_full_pipeline_keeps_the_bottleneck_busy_and_stays_near_the_closed_form():
    owners = tuple(_owner(4, front_forward_s=0.3, back_s=0.2, front_backward_s=0.3, to_first_s=0.1,
                          from_first_s=0.1, from_last_s=0.1, to_last_s=0.1) for _ in range(12))
    stages = (StageTimes(1.0, 2.0), StageTimes(1.0, 2.0), StageTimes(1.0, 2.0))
    times = PipelineTimes(owners=owners, stages=stages, hops_forward_s=(0.01, 0.01), hops_backward_s=(0.01, 0.01))
    schedule, estimate = schedule_epoch(times), edgesys_estimate(times)
    assert schedule.node_busy_s == [pytest.approx(48 * 3.0)] * 3  # work is conserved
    assert schedule.epoch_s >= 48 * 3.0  # no node does more than one thing at a time
    assert abs(schedule.epoch_s - estimate.epoch_s) / estimate.epoch_s < 0.05
    assert len(schedule.tasks) == 48 * (3 + 2 * 3)


def test_aggregation_waits_for_the_last_upload_and_sends_one_after_the_other():
    owners = (_owner(1, upload_s=1.0, download_s=2.0), _owner(2, upload_s=3.0, download_s=2.0))
    times = PipelineTimes(owners=owners, stages=(StageTimes(1.0, 1.0),))
    schedule = schedule_epoch(times)
    assert schedule.owner_done_s == [3.0, 6.0]  # owner 1's first forward goes before owner 0's backward (FIFO)
    assert schedule.aggregated_s == 9.0 and schedule.owner_updated_s == [11.0, 13.0]
    assert edgesys_estimate(times).aggregation_s == 2.0 + 4.0


def test_same_inputs_same_schedule():
    times = _hand_case()
    assert schedule_epoch(times).tasks == schedule_epoch(times).tasks
