"""The capacity oracle's rate search: the largest rate on its grid whose footprint fits, found with as few measured
footprints as it takes."""

from types import SimpleNamespace

import numpy as np

from msfusion_ray.devices.capacity import CapacityOracle
from msfusion_ray.devices.memory_need import MemoryNeed


class _Planner:
    """Footprints proportional to the summed widths; counts how many were asked for."""

    def __init__(self):
        self.asked = 0

    def footprint(self, widths, batch_size, depth=None):
        self.asked += 1
        return SimpleNamespace(total=sum(widths.values()))


class _Family:
    spec = None
    name = "fake"


def _oracle(caps, monkeypatch, need=None):
    monkeypatch.setattr("msfusion_ray.devices.capacity.prefix_selection", lambda spec, rate: rate)
    monkeypatch.setattr("msfusion_ray.devices.capacity.widths_of", lambda spec, rate: {"units": round(64 * rate)})
    planner = _Planner()
    fleet = SimpleNamespace(memory_caps=np.asarray(caps, dtype=np.int64), profiles=(SimpleNamespace(memory_need=need),),
                            profile_of=np.zeros(len(caps), dtype=np.int32))
    return CapacityOracle(fleet, _Family(), planner, batch_size=4), planner


def test_a_participant_that_holds_the_whole_model_costs_one_footprint(monkeypatch):
    oracle, planner = _oracle([1000], monkeypatch)
    assert oracle.max_rate(0) == 1.0 and planner.asked == 1


def test_smaller_caps_get_the_largest_rate_that_fits_or_none(monkeypatch):
    oracle, planner = _oracle([63, 20, 1, 0], monkeypatch)
    assert [oracle.max_rate(p) for p in range(4)] == [63 / 64, 20 / 64, 1 / 64, None]


def test_a_device_with_a_need_model_gets_the_rate_its_need_fits(monkeypatch):
    """need = 2 x footprint + 1 MiB: a cap of 1 MiB + 40 bytes holds a footprint of 20 (rate 20/64), not 40."""
    need = MemoryNeed(scale=2.0, fixed_mib=1.0)
    oracle, _ = _oracle([2**20 + 40, 2**20 + 1, 1000], monkeypatch, need)
    assert [oracle.max_rate(p) for p in range(3)] == [20 / 64, None, None]
    assert oracle.fits(0, {"units": 20}) and not oracle.fits(0, {"units": 21})
    plain, _ = _oracle([2**20 + 40], monkeypatch)
    assert plain.max_rate(0) == 1.0  # the same cap without a need model: the footprint alone, as before
