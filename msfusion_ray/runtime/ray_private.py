"""Every use of Ray's private modules (`ray._private`), in one place: each with why no public API does it, and
the Ray versions it was checked against. A Ray upgrade checks this module first (tests/runtime/test_cluster.py and
tests/test_stopping.py exercise each use); where an attribute is gone, each function falls back to doing nothing
rather than failing the run.

Checked against: ray 2.60.0.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

CHECKED_RAY_VERSIONS = ("2.60.0",)


def keep_cluster_on_loopback() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, into `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, when
    it is first imported; where that already happened, set what it read (no public setter; the environment
    variable alone comes too late)."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def disable_failure_signal_handler() -> None:
    """Leave Ray's C++ failure-signal handler out of this process (read by `ray.init` from
    `ray._private.ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER`; no `ray.init` argument): it catches SIGTERM,
    prints a C++ stack dump and aborts the process before a Python handler could stop a run cleanly. Ray's own
    workers keep theirs."""
    import ray._private.ray_constants as ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def fate_sharing_supported() -> bool:
    """Whether processes Ray starts here can be bound to die with their parent (Linux's parent-death signal):
    `ray._private.utils.detect_fate_sharing_support`, which Ray consults itself; no public equivalent."""
    try:
        from ray._private.utils import detect_fate_sharing_support

        return bool(detect_fate_sharing_support())
    except (ImportError, AttributeError):
        return False


def head_node_shares_fate() -> bool:
    """Whether this process started the cluster's head node with kernel fate sharing (its processes die with this
    one): `ray._private.worker._global_node`, the node this process started; Ray has no public view of it. False
    where that is not known, and for a joined cluster."""
    try:
        from ray._private import worker

        node = worker._global_node
        return node is not None and node.is_head() and bool(getattr(node, "kernel_fate_share", False))
    except (ImportError, AttributeError):
        return False


def route_worker_lines(to: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    """Send the lines Ray pushes to the process that started the cluster (its workers' failure texts, "A worker
    died or was killed ...", printed from a thread of Ray's own by `ray._private.worker.print_to_stdstream`,
    whatever `log_to_driver` says) to `to(data)`, `data["lines"]` holding them; returns what restores Ray's own.
    Ray offers no hook for them."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return lambda: None
    saved = getattr(ray_worker, "print_to_stdstream", None)
    if saved is None:
        return lambda: None

    def routed(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        to(data)

    ray_worker.print_to_stdstream = routed

    def restore() -> None:
        ray_worker.print_to_stdstream = saved

    return restore
