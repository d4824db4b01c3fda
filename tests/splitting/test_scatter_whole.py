"""Whole updates (no index map, one weight) fold without an array of weights per update; the figures must be those
of adding each update's weight entry by entry, bit for bit, whatever order whole and partial updates come in."""

import numpy as np

from msfusion_ray.splitting.aggregate import ScatterAccumulator


def _entry_by_entry(template, updates):
    """The weighted mean as `ScatterAccumulator` computed it before: float64 sums and weights per entry."""
    sums = {k: np.zeros(v.shape) for k, v in template.items()}
    weights = {k: np.zeros(v.shape) for k, v in template.items()}
    for sub, rows, weight in updates:
        for key, value in sub.items():
            where = (rows,) if rows is not None and key == "w" else ...
            sums[key][where] += weight * np.asarray(value, dtype=np.float64)
            weights[key][where] += weight
    out = {}
    for key, previous in template.items():
        covered = weights[key] > 0
        merged = np.array(previous, dtype=np.float32)
        merged[covered] = (sums[key][covered] / weights[key][covered]).astype(np.float32)
        out[key] = merged
    return out, weights


def test_whole_and_partial_updates_fold_to_the_entry_by_entry_figures_bit_for_bit():
    rng = np.random.default_rng(3)
    template = {"w": rng.standard_normal((6, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    rows = np.array([0, 2, 5])
    updates = []
    for k in range(12):  # weights that do not add exactly in float64, whole ones first, then mixed
        weight = float(rng.uniform(0.1, 3.0)) / 3.0
        partial = k >= 5 and k % 2 == 1
        sub = {"w": rng.standard_normal((3, 5) if partial else (6, 5)).astype(np.float32),
               "b": rng.standard_normal(5).astype(np.float32)}
        updates.append((sub, rows if partial else None, weight))
    accumulator = ScatterAccumulator(template)
    for sub, kept, weight in updates:
        imap = {"w": (kept, None), "b": (None,)} if kept is not None else None
        accumulator.add(sub, imap, weight)
    expected, weights = _entry_by_entry(template, updates)
    result = accumulator.result(template)
    for key in template:
        assert np.array_equal(result[key], expected[key])
        assert np.array_equal(accumulator.coverage()[key], weights[key])


def test_only_whole_updates_still_report_their_coverage_entry_by_entry():
    template = {"w": np.zeros((2, 3), dtype=np.float32)}
    accumulator = ScatterAccumulator(template)
    accumulator.add({"w": np.ones((2, 3), dtype=np.float32)}, None, 0.1)
    accumulator.add({"w": np.ones((2, 3), dtype=np.float32)}, None, 0.2)
    assert np.array_equal(accumulator.coverage()["w"], np.full((2, 3), 0.1 + 0.2))
    assert np.array_equal(accumulator.result(template)["w"], np.ones((2, 3), dtype=np.float32))
