"""How many host actors a run starts when it sets nothing: one per threads_per_host of its CPUs."""

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.runtime.host_pool import host_count


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
