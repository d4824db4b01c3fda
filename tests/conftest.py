"""Shared fixtures: one Ray cluster for the whole session (loopback only), small real data, config builders."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from msfusion_ray.runtime.cluster import apply_offline_env, start_local_ray

apply_offline_env()  # before Ray is imported anywhere: loopback only, no telemetry, no cloud probes

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

SMALL_CONFIG = {
    "name": "test",
    "rounds": 2,
    "seed": 0,
    "data": {"dataset": "fashion_mnist", "train_samples": 600, "eval_samples": 200, "min_samples_per_participant": 8},
    "model": {"name": "cnn", "width": 0.25},
    "fleet": {"devices": {"raspberry-pi-4": 2, "phone-midrange": 1}, "memory_scale": 0.001},
    "strategy": {"name": "fedavg"},
    "training": {"local_steps": 3, "batch_size": 16, "lr": 0.05},
    "runtime": {"hosts": 2, "task_timeout_s": 120, "device": "cpu"},  # results pinned on CPU, GPU or not
}


@pytest.fixture
def small_config_dict(tmp_path):
    data = copy.deepcopy(SMALL_CONFIG)
    data["output_dir"] = str(tmp_path / "runs")
    return data


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the runtime's hosts: on a shared 2-core machine more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    start_local_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    yield
    ray.shutdown()
