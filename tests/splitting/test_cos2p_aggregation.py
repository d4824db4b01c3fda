"""Co-S2P's staleness and importance weights against hand-computed values."""

import numpy as np
import pytest

from msfusion_ray.splitting.cos2p_aggregation import WeightedDeltaSum, delta, drift, importance, raw_weight


def _global(value):
    return {"a": np.full(4, value, np.float32), "b": np.full((2, 3), value, np.float32)}


def test_weights_and_the_new_global_model_on_three_fake_updates_match_a_hand_computation():
    """Global versions 3, 4, 5 hold every entry at 0.0, 0.5, 1.0; t = 5. Update 1 (rate 1, from version 5) holds
    the whole model, update 2 (rate 0.5, from 4) entries a[0:2] and b[:, 0], update 3 (rate 0.25, from 3) a[3]."""
    history = {version: _global(value) for version, value in ((3, 0.0), (4, 0.5), (5, 1.0))}
    current = history[5]
    d1 = {"a": np.full(4, 0.1, np.float32), "b": np.full((2, 3), -0.1, np.float32)}  # ||.||_1 = 1.0
    d2 = {"a": np.array([0.4, -0.4], np.float32), "b": np.array([[1.0], [1.0]], np.float32)}  # 2.8
    d3 = {"a": np.array([-2.0], np.float32)}  # 2.0
    imap2 = {"a": (np.array([0, 1]),), "b": (None, np.array([0]))}
    imap3 = {"a": (np.array([3]),)}

    imp = [importance(d1, 1.0), importance(d2, 0.5), importance(d3, 0.25)]
    assert imp == pytest.approx([1.0, 5.6, 8.0])
    drifts = [drift(current, history[tau]) for tau in (5, 4, 3)]
    assert drifts == pytest.approx([0.0, 10 * 0.5, 10 * 1.0])  # 10 entries moved 0.5 and 1.0
    # per parameter (Co-S2P's `drift: mean`, issue 25): the mean absolute change, whatever the model's size
    assert [drift(current, history[tau], per_parameter=True) for tau in (5, 4, 3)] == pytest.approx([0.0, 0.5, 1.0])
    raw = np.array([raw_weight(i, d) for i, d in zip(imp, drifts)])
    np.testing.assert_allclose(raw, [1.0 / 1.0, 5.6 / 6.0, 8.0 / 11.0])
    gamma = raw / raw.sum()  # what WeightedDeltaSum's normalisation makes of them

    folded = WeightedDeltaSum(current)
    for update, imap, weight in ((d1, None, raw[0]), (d2, imap2, raw[1]), (d3, imap3, raw[2])):
        folded.add(update, imap, weight)
    new = folded.result(current)
    g1, g2, g3 = gamma
    np.testing.assert_allclose(new["a"], [1 + 0.1 * g1 + 0.4 * g2, 1 + 0.1 * g1 - 0.4 * g2, 1 + 0.1 * g1,
                                          1 + 0.1 * g1 - 2.0 * g3], rtol=1e-6)
    np.testing.assert_allclose(new["b"], [[1 - 0.1 * g1 + g2, 1 - 0.1 * g1, 1 - 0.1 * g1]] * 2, rtol=1e-6)


def test_the_delta_is_taken_on_the_sub_model_only():
    received = {"w": np.array([[1.0, 2.0]], np.float32)}
    trained = {"w": np.array([[1.5, 1.0]], np.float32)}
    np.testing.assert_allclose(delta(trained, received)["w"], [[0.5, -1.0]])
    assert importance(delta(trained, received), 0.5) == pytest.approx(3.0)


def test_per_entry_normalisation_moves_each_entry_by_the_weighted_mean_of_the_deltas_that_reach_it():
    """The three updates' raw weights g = (1, 0.5, 0.25); update 1 holds everything, update 2 a[0:2] and b[:, 0],
    update 3 a[3]: entries only update 1 holds move by its whole delta, shared ones by the g-weighted mean."""
    current = _global(1.0)
    d1 = {"a": np.full(4, 0.1, np.float32), "b": np.full((2, 3), -0.1, np.float32)}
    d2 = {"a": np.array([0.4, -0.4], np.float32), "b": np.array([[1.0], [1.0]], np.float32)}
    d3 = {"a": np.array([-2.0], np.float32)}
    folded = WeightedDeltaSum(current, per_entry=True)
    folded.add(d1, None, 1.0)
    folded.add(d2, {"a": (np.array([0, 1]),), "b": (None, np.array([0]))}, 0.5)
    folded.add(d3, {"a": (np.array([3]),)}, 0.25)
    new = folded.result(current)
    np.testing.assert_allclose(new["a"], [1 + (0.1 + 0.5 * 0.4) / 1.5, 1 + (0.1 - 0.5 * 0.4) / 1.5, 1.1,
                                          1 + (0.1 - 0.25 * 2.0) / 1.25], rtol=1e-6)
    np.testing.assert_allclose(new["b"], [[1 + (-0.1 + 0.5) / 1.5, 0.9, 0.9]] * 2, rtol=1e-6)


def test_per_entry_normalisation_leaves_entries_no_update_holds():
    current = _global(1.0)
    folded = WeightedDeltaSum(current, per_entry=True)
    folded.add({"a": np.array([0.5], np.float32)}, {"a": (np.array([2]),)}, 3.0)
    new = folded.result(current)
    np.testing.assert_array_equal(new["a"], [1.0, 1.0, 1.5, 1.0])
    np.testing.assert_array_equal(new["b"], current["b"])
