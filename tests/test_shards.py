import pickle

import numpy as np
import pytest

from msfusion_ray.shards import Shards


def test_shards_hold_each_participants_indices_as_views_of_one_array_and_pickle_as_two_buffers():
    parts = [np.array([4, 1]), np.array([], dtype=np.int64), np.array([7, 0, 3])]
    shards = Shards(parts)
    assert len(shards) == 3
    assert [list(s) for s in shards] == [[4, 1], [], [7, 0, 3]]
    assert list(shards[-1]) == [7, 0, 3] and shards[2].base is shards.flat
    with pytest.raises(IndexError):
        shards[3]
    buffers = []
    opened = pickle.loads(pickle.dumps(shards, protocol=5, buffer_callback=buffers.append), buffers=buffers)
    assert len(buffers) == 2 and [list(s) for s in opened] == [list(s) for s in shards]
