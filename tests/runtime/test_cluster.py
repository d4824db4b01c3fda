"""The embedded cluster stays on loopback even when Ray was imported before the environment was set (as the CLI
does): Ray reads its loopback switch at import time. And it is a cluster of its own: not one that RAY_ADDRESS
names or that another program started on this machine. It starts lean (no autoscaler monitor, log monitor or
dashboard process), and its workers have imported the actors' modules before they take work."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, os, sys
import psutil
import ray  # imported first, before the offline environment exists
from msfusion_ray.config import RuntimeConfig
from msfusion_ray.runtime.cluster import node_addresses, ray_cluster

@ray.remote(num_cpus=0)
def loaded():
    preloaded = [m for m in ("torch", "msfusion_ray.runtime.host", "msfusion_ray.runtime.driver") if m in sys.modules]
    return preloaded, sys.modules["msfusion_ray"].__file__

with ray_cluster(RuntimeConfig(num_cpus=1, object_store_mib=128)):
    scripts = sorted({os.path.basename(arg) for p in psutil.Process().children(recursive=True)  # Ray's titles
                      for arg in p.cmdline()[:4] if arg.endswith(".py") or arg.startswith("ray::")})
    preloaded, package = ray.get(loaded.remote(), timeout=120)
    print(json.dumps({"scripts": scripts, "worker_loaded": preloaded, "same_package": package == __import__(
        "msfusion_ray").__file__, "hook_left_set": any("SETUP_HOOK" in key for key in os.environ)}))
    print(sorted(node_addresses()))
"""


def test_embedded_cluster_is_its_own_and_binds_to_loopback_whatever_the_import_order():
    env_without_switch = {k: v for k, v in __import__("os").environ.items()
                          if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env_without_switch["RAY_ADDRESS"] = "127.0.0.1:9"  # nothing listens there: joining it would fail
    env_without_switch.pop("PYTHONPATH", None)  # the package found from the current directory, as `python -m` does
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180,
                          env=env_without_switch, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['127.0.0.1']"
    seen = json.loads(done.stdout.strip().splitlines()[-2])
    assert "ray::DashboardAgent" in seen["scripts"]  # the raylet's agents, which it needs, still run
    assert not {"monitor.py", "log_monitor.py", "dashboard.py"} & set(seen["scripts"]), seen["scripts"]
    assert seen["worker_loaded"] == ["torch", "msfusion_ray.runtime.host", "msfusion_ray.runtime.driver"]
    assert seen["same_package"]  # the hook ran before the driver's sys.path reached the worker: the same copy
    assert not seen["hook_left_set"]  # set for the cluster's start only


def test_the_lean_head_and_the_setup_hook_leave_ray_as_they_found_it():
    from ray._private.node import Node

    from msfusion_ray.runtime.cluster import preloading_workers
    from msfusion_ray.runtime.preload import HOOK
    from msfusion_ray.runtime.ray_private import lean_head_node

    methods = {name: getattr(Node, name) for name in ("start_monitor", "start_log_monitor", "start_api_server")}
    with lean_head_node(dashboard=True):
        assert Node.start_api_server is methods["start_api_server"]  # the dashboard, where asked for, starts
        assert Node.start_monitor is not methods["start_monitor"]
    environment = dict(os.environ)
    with lean_head_node(dashboard=False), preloading_workers():
        assert Node.start_api_server is not methods["start_api_server"]
        assert HOOK in os.environ.values()
        assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(Path(__file__).resolve().parents[2])
    assert {name: getattr(Node, name) for name in methods} == methods
    assert dict(os.environ) == environment


def test_a_preload_that_fails_does_not_raise(monkeypatch):
    from msfusion_ray.runtime import preload

    monkeypatch.setattr(preload, "ACTOR_MODULES", ("msfusion_ray.no_such_module",))
    preload.preload()  # a raising hook would end the worker; the actor's own import reports the failure


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
