"""The capacity oracle's rate search: the largest rate on its grid whose footprint fits, found with as few measured
footprints as it takes."""

from types import SimpleNamespace

import numpy as np

from msfusion_ray.devices.capacity import CapacityOracle


class _Planner:
    """Footprints proportional to the summed widths; counts how many were asked for."""

    def __init__(self):
        self.asked = 0

    def footprint(self, widths, batch_size, depth=None):
        self.asked += 1
        return SimpleNamespace(total=sum(widths.values()))


class _Family:
    spec = None


def _oracle(caps, monkeypatch):
    monkeypatch.setattr("msfusion_ray.devices.capacity.prefix_selection", lambda spec, rate: rate)
    monkeypatch.setattr("msfusion_ray.devices.capacity.widths_of", lambda spec, rate: {"units": round(64 * rate)})
    planner = _Planner()
    fleet = SimpleNamespace(memory_caps=np.asarray(caps, dtype=np.int64))
    return CapacityOracle(fleet, _Family(), planner, batch_size=4), planner


def test_a_participant_that_holds_the_whole_model_costs_one_footprint(monkeypatch):
    oracle, planner = _oracle([1000], monkeypatch)
    assert oracle.max_rate(0) == 1.0 and planner.asked == 1


def test_smaller_caps_get_the_largest_rate_that_fits_or_none(monkeypatch):
    oracle, planner = _oracle([63, 20, 1, 0], monkeypatch)
    assert [oracle.max_rate(p) for p in range(4)] == [63 / 64, 20 / 64, 1 / 64, None]
