"""FedBuff and FedAsync: staleness weights and aggregation against hand-computed values."""

import math

import numpy as np
import pytest

from msfusion_ray.models.base import DataShape
from msfusion_ray.models import build_family
from msfusion_ray.strategies import make_strategy
from msfusion_ray.config import StrategyConfig
from msfusion_ray.strategies.asynchronous import staleness_weight
from msfusion_ray.strategies.base import Update, WorkOrder


def test_staleness_functions_follow_their_formulas():
    assert staleness_weight(0, "polynomial", 0.5) == 1.0
    assert staleness_weight(3, "polynomial", 0.5) == pytest.approx(1 / math.sqrt(4))  # FedBuff's 1/sqrt(1+s)
    assert staleness_weight(3, "polynomial", 1.0) == pytest.approx(1 / 4)
    assert staleness_weight(4, "hinge", 10, 4) == 1.0
    assert staleness_weight(6, "hinge", 10, 4) == pytest.approx(1 / (10 * 2 + 1))
    assert staleness_weight(50, "constant", 0.5) == 1.0


def _strategy(name, **params):
    family = build_family("cnn", DataShape((1, 28, 28), 10), 0.25)
    return make_strategy(StrategyConfig(name, params), family, seed=0)


def _weights(value):
    return {"w": np.full(3, value, dtype=np.float32)}


def test_fedbuff_applies_the_mean_staleness_weighted_delta():
    strategy = _strategy("fedbuff", buffer_size=2, server_lr=0.5)
    history = {0: _weights(1.0), 1: _weights(2.0)}
    buffer = strategy.new_buffer(history[1])
    # trained from version 0 (staleness 1): delta 3 - 1 = 2, weight 1/sqrt(2); from version 1 (staleness 0): 4 - 2
    strategy.fold(buffer, WorkOrder(0), Update(0, _weights(3.0), 10, base_version=0), 1, history)
    strategy.fold(buffer, WorkOrder(1), Update(1, _weights(4.0), 10, base_version=1), 0, history)
    new, metrics = strategy.aggregate(1, history[1], buffer, history)
    expected = 2.0 + 0.5 * (2.0 / math.sqrt(2) + 2.0) / 2
    assert np.allclose(new["w"], expected) and new["w"].dtype == np.float32 and metrics["updates"] == 2
    assert strategy.schedule().buffer_size == 2 and strategy.history_depth() == 0


def test_fedasync_mixes_each_update_in_with_its_staleness():
    strategy = _strategy("fedasync", alpha=0.6)
    history = {0: _weights(1.0), 2: _weights(2.0)}
    buffer = strategy.new_buffer(history[2])
    strategy.fold(buffer, WorkOrder(0), Update(0, _weights(5.0), 10, base_version=0), 2, history)
    new, metrics = strategy.aggregate(2, history[2], buffer, history)
    alpha = 0.6 * 3 ** -0.5
    assert np.allclose(new["w"], (1 - alpha) * 2.0 + alpha * 5.0) and metrics["alpha_t"] == pytest.approx(alpha)
    assert strategy.schedule().buffer_size == 1
