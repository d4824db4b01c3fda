"""A registered fleet costs arrays, not objects per participant: the fleet, drawn shares, the participant table the
strategies read, the hosts' assignment and the engine's tables; each read back as the records it replaced."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd

from msfusion_ray.config import DataConfig
from msfusion_ray.data import check_enough_samples
from msfusion_ray.devices.fleet import Fleet, FleetSpec, Participant, make_fleet
from msfusion_ray.devices.profile import load_profiles
from msfusion_ray.devices.sources import sampled_fleet
from msfusion_ray.devices.spread import fleet_parts, fleet_table
from msfusion_ray.devices.timeline import VirtualTimeline
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.prepare import ParticipantTable
from msfusion_ray.records import ParticipantRoundRow, RecordWriter, read_fleet
from msfusion_ray.runtime.host_pool import assign_hosts
from msfusion_ray.shards import SampledShards, Shards

MILLION = 1_000_000


def test_a_million_participants_are_a_few_arrays_and_read_back_as_records():
    profiles = load_profiles()
    fleet = make_fleet(FleetSpec("f", {"phone-midrange": 3, "raspberry-pi-4": 1}), profiles, size=MILLION,
                       memory_scale=0.5, seed=3)
    assert len(fleet) == MILLION and fleet.class_names() == ["phone-midrange", "raspberry-pi-4"]
    assert len(pickle.dumps(fleet)) < 13 * 2**20  # a class index and a memory cap per participant
    last = fleet.participants[-1]
    assert last == Participant(MILLION - 1, profiles["raspberry-pi-4"], int(profiles["raspberry-pi-4"].memory_bytes
                                                                              * 0.5))
    assert fleet.participants[0].device == profiles["phone-midrange"]
    drawn = fleet.available(7)
    assert drawn.shape == (MILLION,) and drawn.dtype == bool
    assert np.array_equal(drawn, fleet.available(7))  # seeded by the round
    some = np.array([999_999, 3, 500_000])
    assert np.array_equal(fleet.available(7, among=some), drawn[some])  # the same draws, for a cohort alone


def test_a_fleet_built_from_records_is_the_fleet_built_from_arrays():
    profiles = load_profiles()
    made = make_fleet(FleetSpec("f", {"phone-midrange": 2, "jetson-nano": 3}), profiles, seed=1)
    rebuilt = Fleet(tuple(made.participants), name="f", seed=1)
    assert list(rebuilt.participants) == list(made.participants)
    assert np.array_equal(rebuilt.available(2), made.available(2))
    assert np.array_equal(pickle.loads(pickle.dumps(made)).memory_caps, made.memory_caps)


def test_drawn_shares_are_kept_as_four_numbers_and_the_same_every_time():
    shards = SampledShards(n_samples=60_000, parts=MILLION, size=6, seed=0)
    assert len(pickle.dumps(shards)) < 300
    share = shards[123_456]
    assert len(share) == 6 == len(np.unique(share)) == shards.size_of(123_456)
    assert np.array_equal(share, SampledShards(60_000, MILLION, 6, 0)[123_456])  # drawn again, the same
    assert not np.array_equal(share, SampledShards(60_000, MILLION, 6, 1)[123_456])  # the seed decides
    subset = shards.subset([5, 123_456])
    assert len(subset) == 2 and np.array_equal(subset[1], share)  # a host's: by position, drawn from the id
    listed = Shards([np.arange(3), np.arange(3, 5)])
    assert listed.size_of(1) == 2 and np.array_equal(listed.subset([1])[0], [3, 4])


def test_drawn_shares_need_as_many_samples_as_each_draws_whatever_the_fleet():
    class Bundle:
        train = range(10)

    check_enough_samples(Bundle(), DataConfig(partition="sampled", min_samples_per_participant=4), MILLION)
    try:
        check_enough_samples(Bundle(), DataConfig(partition="sampled", samples_per_participant=11,
                                                  min_samples_per_participant=4), 5)
    except UserInputError as err:
        assert err.where == "data.samples_per_participant"
    else:
        raise AssertionError("a draw larger than the training split was accepted")


def test_the_participant_table_reads_the_arrays_when_asked():
    profiles = load_profiles()
    fleet = make_fleet(FleetSpec("f", {"phone-midrange": 1, "jetson-nano": 1}), profiles, size=MILLION)
    table = ParticipantTable(fleet, SampledShards(60_000, MILLION, 6, 0))
    info = table[MILLION - 1]
    assert (info.id, info.device, info.samples, info.labels) == (MILLION - 1, "jetson-nano", 6, None)
    assert len(table) == MILLION


def test_hosts_take_participants_round_robin_or_within_their_class():
    assert [list(h) for h in assign_hosts(5, 2)] == [[0, 2, 4], [1, 3]]
    classes = np.array([1, 0, 1, 1, 0, 0])  # the class of participant 0 comes first
    assert [list(h) for h in assign_hosts(6, 4, classes)] == [[0, 3], [2], [1, 5], [4]]


def test_the_engines_timeline_keeps_only_who_worked_in_a_checkpoint():
    timeline = VirtualTimeline(MILLION)
    row = ParticipantRoundRow("r", 1, 999_999, "pi", 0, "ok", device_time_s=2.5)
    timeline.record(row)
    timeline.record(ParticipantRoundRow("r", 2, 999_999, "pi", 0, "ok", device_time_s=1.0))
    saved = timeline.state_arrays()
    assert saved["busy_ids"].tolist() == [999_999] and saved["busy_s"].tolist() == [3.5] and row.device_clock_s == 2.5
    again = VirtualTimeline(MILLION)
    again.load_arrays(saved)
    assert again.busy_s[999_999] == 3.5 and again.busy_s.sum() == 3.5


def test_a_sampled_fleet_of_a_million_is_arrays_and_its_table_is_written_a_part_at_a_time(tmp_path):
    fleet = sampled_fleet("phones", MILLION, seed=3, run_seed=0)
    assert len(fleet) == MILLION and len(fleet.profiles) == 1 and fleet.values.name_of.shape == (MILLION,)
    assert fleet.device_of(MILLION - 1).train_gflops == fleet.values.fields["train_gflops"][MILLION - 1]
    assert fleet.label(MILLION - 1) == fleet.values.names[fleet.values.name_of[MILLION - 1]]
    small = sampled_fleet("phones", 10, seed=3, run_seed=0)
    RecordWriter(tmp_path).write_fleet(fleet_parts(small, rows_per_part=3))  # four row groups
    pd.testing.assert_frame_equal(read_fleet(tmp_path), pd.DataFrame(fleet_table(small)))
    assert read_fleet(tmp_path)["name"].tolist() == [small.label(i) for i in range(10)]
