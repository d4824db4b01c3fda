"""The embedded cluster stays on loopback even when Ray was imported before the environment was set (as the CLI
does): Ray reads its loopback switch at import time. And it is a cluster of its own: not one that RAY_ADDRESS
names or that another program started on this machine."""

import subprocess
import sys

SCRIPT = """
import ray  # imported first, before the offline environment exists
from msfusion_ray.config import RuntimeConfig
from msfusion_ray.runtime.cluster import node_addresses, ray_cluster
with ray_cluster(RuntimeConfig(num_cpus=1, object_store_mib=128)):
    print(sorted(node_addresses()))
"""


def test_embedded_cluster_is_its_own_and_binds_to_loopback_whatever_the_import_order():
    env_without_switch = {k: v for k, v in __import__("os").environ.items()
                          if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env_without_switch["RAY_ADDRESS"] = "127.0.0.1:9"  # nothing listens there: joining it would fail
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180,
                          env=env_without_switch)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['127.0.0.1']"


def test_a_cluster_that_times_out_at_start_is_tried_again_then_reported_in_one_line(monkeypatch):
    import pytest
    import ray

    from msfusion_ray.errors import ClusterStartError
    from msfusion_ray.runtime import cluster

    calls = []

    def never_starts(**kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", never_starts)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(ClusterStartError, match="did not start in 3 attempts"):
        cluster.start_local_ray(num_cpus=1)
    assert len(calls) == cluster.STARTUP_ATTEMPTS and all(c["address"] == "local" for c in calls)

    def wrong_argument(**kwargs):
        raise ValueError("bad argument")

    monkeypatch.setattr(ray, "init", wrong_argument)
    with pytest.raises(ValueError):  # anything else is not retried
        cluster.start_local_ray(num_cpus=1)


def test_an_address_where_no_cluster_answers_is_bad_input(tmp_path, small_config_dict):
    """Ray itself would wait minutes for a GCS that is not there: one line, exit 2, nothing written."""
    import yaml

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(small_config_dict))
    done = subprocess.run([sys.executable, "-m", "msfusion_ray", "run", str(config), "--address", "127.0.0.250:9"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: runtime.address: no Ray cluster answers at 127.0.0.250:9 (")
    assert not (tmp_path / "runs").exists()
