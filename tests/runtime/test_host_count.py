"""How many host actors a run starts when it sets nothing: one per threads_per_host of its CPUs; when an
enforced run's evaluation may run beside its training."""

from types import SimpleNamespace

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.runtime.host_pool import evaluation_beside_training, host_count
from msfusion_ray.runtime.runner import Runner


def test_by_default_one_host_per_core_never_more_than_participants():
    assert host_count(RuntimeConfig(), participants=10, cpus=2) == 2
    assert host_count(RuntimeConfig(), participants=10, cpus=16) == 10
    assert host_count(RuntimeConfig(), participants=1000, cpus=16) == 16
    assert host_count(RuntimeConfig(threads_per_host=2), participants=10, cpus=8) == 4
    assert host_count(RuntimeConfig(threads_per_host=4), participants=10, cpus=2) == 1


def test_a_sweep_cells_cpu_share_and_max_hosts_bound_it_and_hosts_overrides():
    assert host_count(RuntimeConfig(host_cpus=0.9), participants=10, cpus=2) == 1  # two cells on two cores
    assert host_count(RuntimeConfig(host_cpus=3.6), participants=10, cpus=16) == 3
    assert host_count(RuntimeConfig(max_hosts=4), participants=1000, cpus=64) == 4
    assert host_count(RuntimeConfig(hosts=8), participants=10, cpus=2) == 8  # asked for: more than the cores
    assert host_count(RuntimeConfig(hosts=8), participants=3, cpus=2) == 3


def test_an_enforced_runs_evaluation_runs_beside_training_only_where_every_host_fits_at_its_threads():
    """A host evaluates at its whole threads (no quota): beside the training only where that leaves every other
    host the cores its quota measures on."""
    assert evaluation_beside_training(hosts=1, threads=1, budget=1.8)[0]
    assert evaluation_beside_training(hosts=2, threads=2, budget=4.0)[0]
    beside, line = evaluation_beside_training(hosts=2, threads=1, budget=1.8)
    assert not beside and line.startswith("evaluation between steps")
    report = SimpleNamespace(started={"evaluation": object()}, step=SimpleNamespace(index=1))
    for fits in (True, False):
        runner = SimpleNamespace(config=SimpleNamespace(runtime=RuntimeConfig(enforce="cgroups"), rounds=3),
                                 hosts=SimpleNamespace(evaluation_beside=fits))
        assert Runner._overlaps_next_step(runner, report) == fits
