"""Starting (or joining) the Ray cluster a run uses.

The embedded local cluster is an offline tool's cluster: it binds to 127.0.0.1 only, sends no usage statistics,
and its processes get a proxy setting that makes any attempt to reach outside (Ray's dashboard probes a cloud
metadata address at start-up) fail at once on loopback. Joining an existing cluster (`--address`) changes nothing
in the environment.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import ray

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.errors import ClusterStartError, UserInputError
from msfusion_ray.runtime.ray_private import (fate_sharing_supported, head_node_shares_fate,
                                              keep_cluster_on_loopback)

_DEAD_PROXY = "http://127.0.0.1:9"
OFFLINE_LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # bind every Ray socket to 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": _DEAD_PROXY, "https_proxy": _DEAD_PROXY,
    "HTTP_PROXY": _DEAD_PROXY, "HTTPS_PROXY": _DEAD_PROXY,
    "no_proxy": "localhost,127.0.0.1,::1", "NO_PROXY": "localhost,127.0.0.1,::1",
}


def apply_offline_env() -> None:
    """Set the loopback-only, no-telemetry environment for this process and the Ray processes it starts."""
    os.environ.update(OFFLINE_LOOPBACK_ENV)
    keep_cluster_on_loopback()


STARTUP_ATTEMPTS = 3
PROBE_TIMEOUT_S = 5.0  # a cluster's GCS port that does not accept a connection in this long is not there
log = logging.getLogger(__name__)


def start_local_ray(**init_args: Any) -> None:
    """A new local Ray instance of our own (`address="local"`: never one that another program started here or
    that RAY_ADDRESS names), on loopback. On a busy machine Ray's raylet can give up waiting 15 s for its
    dashboard agent and die (ray-project/ray#65983: "The current node timed out during startup"); a fresh
    attempt usually starts, so a few are made before the failure is reported in one line."""
    apply_offline_env()
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            ray.init(address="local", log_to_driver=False, **init_args)
            break
        except Exception as err:  # noqa: BLE001  (Ray raises a bare Exception for this)
            if "timed out during startup" not in str(err):
                raise
            log.warning("Ray did not start (attempt %d of %d): %s", attempt, STARTUP_ATTEMPTS, err)
            ray.shutdown()
    else:
        raise ClusterStartError(f"the embedded Ray cluster did not start in {STARTUP_ATTEMPTS} attempts: its raylet "
                                "gave up waiting for its dashboard agent, which happens when the machine is very "
                                "busy (ray-project/ray#65983); try again when it is less loaded")
    if node_addresses() != {"127.0.0.1"}:
        ray.shutdown()
        raise ClusterStartError(f"the embedded Ray cluster did not bind to loopback ({node_addresses()})")


def start_cluster(runtime: RuntimeConfig, runtime_env: dict[str, Any] | None = None,
                  device_classes: Sequence[str] = ()) -> None:
    """Join `runtime.address` with the job's `runtime_env` (the user's code it ships to nodes that may not see this
    machine's files; `join_cluster` checks it has a node for each of `device_classes`), or start the embedded
    cluster the runtime config describes. The embedded cluster is this machine alone (it binds to loopback), where
    every process finds the user's code at its path: it gets no job runtime env, which would make Ray start each of
    the run's workers fresh through its runtime-env agent instead of taking the ones it prestarted (three actors
    importing torch were ready in 24-25 s without one, 32-39 s with one, on this machine under load 30). Ray's
    informational start-up lines are left out; its warnings go where the launcher sends them
    (msfusion_ray.app.ray_session.RayLines: the run's log)."""
    if runtime.address:
        join_cluster(runtime, runtime_env, device_classes)
    else:
        start_local_ray(num_cpus=runtime.num_cpus, include_dashboard=runtime.dashboard,
                        object_store_memory=runtime.object_store_mib * 1024**2, logging_level=logging.WARNING)


def join_cluster(runtime: RuntimeConfig, runtime_env: dict[str, Any] | None = None,
                 device_classes: Sequence[str] = ()) -> None:
    """Connect to the cluster at `runtime.address`, and with `runtime.device_resources` wait up to
    `runtime.node_wait_s` until it has a node for every device class in `device_classes`. An address where no
    Ray cluster answers, a cluster that refuses us, or a device class no node offers in time: a one-line
    `UserInputError` (Ray itself would wait minutes for a GCS that is not there, printing as it goes). A cluster
    on this machine's loopback (nodes on 127.0.0.x, as cluster/local_cluster.py starts them) is joined from the
    node whose address it names."""
    address = runtime.address
    where = "runtime.address"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
        except OSError as err:
            raise UserInputError(where, f"no Ray cluster answers at {address} ({err.strerror or err})") from None
    loopback = not address.startswith("ray://") and _is_loopback(host)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env,
                 **({"_node_ip_address": host} if loopback else {}))
    except Exception as err:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError or its own for these)
        ray.shutdown()
        text = str(err)
        if "InvalidAuthToken" in text or "Authentication" in type(err).__name__:
            raise UserInputError(where, f"the cluster at {address} asks for token authentication: set "
                                        "RAY_AUTH_MODE=token (its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)") \
                from None
        raise UserInputError(where, f"cannot join the Ray cluster at {address} ({type(err).__name__}: "
                                    f"{text.strip().splitlines()[0] if text.strip() else '-'})") from None
    missing = _wait_for_classes(device_classes, runtime.node_wait_s) if runtime.device_resources else []
    if missing:
        ray.shutdown()
        raise UserInputError("runtime.device_resources", f"no node of the cluster at {address} offers "
                                                         f"device:{missing[0]} (waited runtime.node_wait_s="
                                                         f"{runtime.node_wait_s:g} s for one to join)")


def _wait_for_classes(classes: Sequence[str], wait_s: float) -> list[str]:
    """The device classes no alive node offers (`device:<name>`), after waiting up to `wait_s` for them."""
    deadline = time.monotonic() + wait_s
    while True:
        offered = {key for node in ray.nodes() if node.get("Alive")
                   for key, amount in node.get("Resources", {}).items() if amount > 0}
        missing = [name for name in classes if f"device:{name}" not in offered]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def node_addresses() -> set[str]:
    return {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


@contextmanager
def ray_cluster(runtime: RuntimeConfig, runtime_env: dict[str, Any] | None = None,
                exiting: bool = False) -> Iterator[None]:
    """Use the Ray session already open in this process, join `runtime.address`, or start an embedded cluster.
    `runtime_env` is the job's (the user's code it ships to a joined cluster, msfusion_ray.code_refs). Only a
    cluster this call started or joined is shut down on exit (never `ray stop`). `exiting`: the process ends right
    after (the command line), so an embedded cluster whose processes the kernel ends with this one is left to end
    with it: `ray.shutdown()` stops them one at a time, waiting up to a second for each."""
    if ray.is_initialized():
        yield
        return
    start_cluster(runtime, runtime_env)
    try:
        yield
    finally:
        end_cluster(exiting)


def end_cluster(exiting: bool = False) -> None:
    """Shut down the cluster this process started or joined, unless the process ends right after (`exiting`) and
    the kernel ends the cluster's processes with it."""
    if not (exiting and ends_with_this_process()):
        ray.shutdown()


def ends_with_this_process() -> bool:
    """Whether the embedded cluster's processes die with this one (Linux: Ray starts them with a parent-death
    signal, its "kernel fate sharing"); False where that is not known, and for a joined cluster."""
    return head_node_shares_fate() and fate_sharing_supported()
