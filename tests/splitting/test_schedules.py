"""The index rules of each scheme on a toy layer, and the coverage property of double shifting."""

import math

import numpy as np
import pytest

from msfusion_ray.splitting import schedules


def test_heterofl_keeps_the_prefix():
    assert schedules.prefix(10, 4).tolist() == [0, 1, 2, 3]


def test_fedrolex_window_matches_torch_roll_definition():
    units, keep = 10, 4
    for j in range(25):
        expected = sorted(np.roll(np.arange(units), j % units)[:keep].tolist())
        assert schedules.rolling(units, keep, j).tolist() == expected
    assert schedules.rolling(10, 4, 0).tolist() == [0, 1, 2, 3]
    assert schedules.rolling(10, 4, 1).tolist() == [0, 1, 2, 9]  # the window starts one unit earlier, wrapping


def test_random_subset_is_uniform_without_replacement_and_seeded():
    picks = [schedules.random_subset(10, 3, np.random.default_rng(s)) for s in range(2000)]
    assert all(len(set(p.tolist())) == 3 and list(p) == sorted(p) for p in picks)
    counts = np.bincount(np.concatenate(picks), minlength=10)
    assert counts.min() > 0.8 * counts.mean()  # each unit about equally likely
    assert np.array_equal(schedules.random_subset(10, 3, np.random.default_rng(1)),
                          schedules.random_subset(10, 3, np.random.default_rng(1)))


def test_zero_overlap_tiles_the_group_and_full_overlap_stacks_the_windows():
    lengths = [4, 4, 2]
    spread = schedules.double_shift_starts(lengths, 10, overlap=0.0, round_idx=0, step=2)
    covered = set()
    for start, length in zip(spread, lengths):
        covered |= set(schedules.window(10, start, length).tolist())
    assert covered == set(range(10))
    assert schedules.double_shift_starts(lengths, 10, overlap=1.0, round_idx=0, step=2) == [0, 0, 0]


@pytest.mark.parametrize("units,rate,participants", [(16, 0.25, 1), (64, 0.3, 3), (10, 0.5, 2), (13, 0.2, 4)])
def test_double_shifting_covers_every_unit_within_ceil_one_over_rate_rounds(units, rate, participants):
    keep = math.ceil(rate * units)
    lengths = [keep] * participants
    for overlap in (0.0, 0.5, 1.0):
        for p in range(participants):
            seen = set()
            for round_idx in range(math.ceil(1 / rate)):
                start = schedules.double_shift_starts(lengths, units, overlap, round_idx, step=keep)[p]
                seen |= set(schedules.window(units, start, keep).tolist())
            assert seen == set(range(units)), (overlap, p)
