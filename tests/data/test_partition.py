import numpy as np
import pytest

from msfusion_ray.data.partition import label_histogram, partition_dirichlet, partition_iid
from msfusion_ray.errors import UserInputError

LABELS = np.repeat(np.arange(10), 100)  # 1000 samples, 100 per class


def test_iid_partition_covers_every_sample_once_in_near_equal_shares():
    parts = partition_iid(1000, 7, seed=3)
    merged = np.concatenate(parts)
    assert sorted(merged.tolist()) == list(range(1000))
    assert {len(p) for p in parts} <= {142, 143}


def test_dirichlet_partition_covers_every_sample_once():
    parts = partition_dirichlet(LABELS, 8, alpha=0.5, seed=1)
    merged = np.concatenate(parts)
    assert len(merged) == 1000 and len(np.unique(merged)) == 1000


def test_partitions_are_reproducible_from_the_seed_and_change_with_it():
    a = partition_dirichlet(LABELS, 8, alpha=0.5, seed=1)
    b = partition_dirichlet(LABELS, 8, alpha=0.5, seed=1)
    c = partition_dirichlet(LABELS, 8, alpha=0.5, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(np.array_equal(x, y) for x, y in zip(partition_iid(1000, 4, 5), partition_iid(1000, 4, 5)))


def _mean_top_class_share(parts):
    hist = label_histogram(LABELS, parts, 10)
    return float((hist.max(axis=1) / hist.sum(axis=1)).mean())


def test_small_alpha_skews_labels_and_large_alpha_approaches_iid():
    skewed = _mean_top_class_share(partition_dirichlet(LABELS, 10, alpha=0.1, seed=0))
    mild = _mean_top_class_share(partition_dirichlet(LABELS, 10, alpha=100.0, seed=0))
    iid = _mean_top_class_share(partition_iid(1000, 10, seed=0))
    assert skewed > 0.5  # most of a participant's data is one class
    assert mild < 0.2 and iid < 0.2  # close to the uniform 0.1


def test_dirichlet_respects_the_minimum_share():
    parts = partition_dirichlet(LABELS, 20, alpha=0.1, seed=0, min_samples=10)
    assert min(len(p) for p in parts) >= 10


def test_more_participants_than_samples_is_a_user_error():
    with pytest.raises(UserInputError, match="participants"):
        partition_iid(5, 6, seed=0)
    with pytest.raises(UserInputError, match="participants"):
        partition_dirichlet(LABELS[:20], 5, alpha=1.0, seed=0, min_samples=5)


def test_dirichlet_tops_up_small_shares_at_a_thousand_participants():
    labels = np.repeat(np.arange(10), 2000)  # 20 samples a participant on average: most draws leave some under 8
    parts = partition_dirichlet(labels, 1000, alpha=0.5, seed=0, min_samples=8)
    merged = np.concatenate(parts)
    assert min(len(p) for p in parts) >= 8
    assert len(merged) == len(labels) == len(np.unique(merged))
    assert _mean_top_class_share(partition_dirichlet(LABELS, 10, alpha=0.1, seed=0, min_samples=50)) > 0.4
