"""What the launcher sends each host: its participants packed, read back as the specs they were made from."""

import pickle

import numpy as np

from msfusion_ray.devices.fleet import Fleet, Participant
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.runtime.settings import ParticipantSpecs
from msfusion_ray.shards import Shards


def _profile(name: str) -> DeviceProfile:
    return DeviceProfile(name=name, description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1,
                         latency_ms=30)


def test_a_hosts_participants_travel_as_a_few_arrays_and_read_back_as_their_specs():
    pi, laptop = _profile("pi"), _profile("laptop")
    fleet = Fleet((Participant(0, pi, 100), Participant(1, laptop, 200), Participant(2, laptop, 300)))
    shards = Shards([np.arange(3), np.arange(3, 5), np.arange(5, 9)])
    specs = ParticipantSpecs([2, 0], fleet, shards)
    buffers = []
    opened = pickle.loads(pickle.dumps(specs, protocol=5, buffer_callback=buffers.append), buffers=buffers)
    for travelled in (specs, opened):
        assert [s.id for s in travelled] == [2, 0]
        assert [s.device for s in travelled] == [laptop, pi]
        assert [s.memory_cap_bytes for s in travelled] == [300, 100]
        assert [list(s.indices) for s in travelled] == [[5, 6, 7, 8], [0, 1, 2]]
    assert len(opened.profiles) == 2 and len(buffers) <= 5
