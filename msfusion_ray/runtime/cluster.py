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
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import ray

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.errors import ClusterStartError, UserInputError

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
    # Ray reads the loopback switch once, when it is first imported: if that has happened, set what it read.
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


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


def start_cluster(runtime: RuntimeConfig, runtime_env: dict[str, Any] | None = None) -> None:
    """Join `runtime.address` (`join_cluster`), or start the embedded cluster the runtime config describes, with the
    job's `runtime_env`. Ray's informational start-up lines are left out (the command line may start the cluster
    before the run's log is open; its warnings still go where `launch.logging_to` sends them)."""
    if runtime.address:
        join_cluster(runtime, runtime_env)
    else:
        start_local_ray(num_cpus=runtime.num_cpus, include_dashboard=runtime.dashboard,
                        object_store_memory=runtime.object_store_mib * 1024**2, logging_level=logging.WARNING,
                        runtime_env=runtime_env)


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
    `runtime_env` is the job's (the user's code it ships, msfusion_ray.code_refs). Only a cluster this call
    started or joined is shut down on exit (never `ray stop`). `exiting`: the process ends right after (the
    command line), so an embedded cluster whose processes the kernel ends with this one is left to end with it:
    `ray.shutdown()` stops them one at a time, waiting up to a second for each."""
    if ray.is_initialized():
        yield
        return
    start_cluster(runtime, runtime_env)
    try:
        yield
    finally:
        if not (exiting and ends_with_this_process()):
            ray.shutdown()


def fate_sharing_supported() -> bool:
    """Whether processes Ray starts here can be bound to die with their parent (Linux)."""
    try:
        from ray._private.utils import detect_fate_sharing_support

        return bool(detect_fate_sharing_support())
    except (ImportError, AttributeError):
        return False


def ends_with_this_process() -> bool:
    """Whether the embedded cluster's processes die with this one (Linux: Ray starts them with a parent-death
    signal, its "kernel fate sharing"); False where that is not known, and for a joined cluster."""
    try:
        from ray._private import worker

        node = worker._global_node
        return node is not None and node.is_head() and bool(getattr(node, "kernel_fate_share", False)) and \
            fate_sharing_supported()
    except (ImportError, AttributeError):
        return False
