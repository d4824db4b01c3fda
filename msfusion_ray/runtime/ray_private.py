"""Every use of Ray's private modules (`ray._private`), in one place: each with why no public API does it, and
the Ray versions it was checked against. A Ray upgrade checks this module first (tests/runtime/test_cluster.py and
tests/test_stopping.py exercise each use); where an attribute is gone, each function falls back to doing nothing
rather than failing the run.

Checked against: ray 2.60.0.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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


_UNNEEDED_ON_ONE_MACHINE = ("start_monitor", "start_log_monitor")


@contextmanager
def lean_head_node(dashboard: bool) -> Iterator[None]:
    """While open, a head node this process starts (`ray.init(address="local")`) leaves out the processes an
    embedded cluster has no use for: the autoscaler's monitor (one machine, nothing to scale), the log monitor (it
    only feeds the workers' output to drivers started with `log_to_driver=True`; workers' failure texts come from
    the GCS) and, without the dashboard, the dashboard's head process (started anyway, with its usage-statistics
    module alone, which is off here, and waited for before the raylet starts). `ray start` has flags for the first
    two (--no-monitor, --include-log-monitor); `ray.init` has none, so the `ray._private.node.Node` methods that
    start them do nothing while this is open (the dashboard's url stays "", as Ray sets it without a dashboard)."""
    try:
        from ray._private.node import Node
    except ImportError:
        yield
        return
    skipped = [name for name in _UNNEEDED_ON_ONE_MACHINE if hasattr(Node, name)]
    if not dashboard and hasattr(Node, "start_api_server"):
        skipped.append("start_api_server")
    saved = {name: getattr(Node, name) for name in skipped}

    def no_dashboard(node: Any, **_: Any) -> None:
        node._webui_url = ""

    try:
        for name in skipped:
            setattr(Node, name, no_dashboard if name == "start_api_server" else lambda node: None)
        yield
    finally:
        for name in skipped:
            setattr(Node, name, saved[name])


def worker_setup_hook_variable() -> str | None:
    """The environment variable through which Ray hands a job's `worker_process_setup_hook` to its workers
    (`ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR`: 'module.function', called by each worker as it
    starts, before it takes any work), which a worker also reads when it inherits it from the raylet. The public
    `runtime_env` field would make Ray start each worker fresh through its runtime-env agent instead of taking the
    ones it prestarted. None where Ray no longer has the name."""
    try:
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    except ImportError:
        return None
    return WORKER_PROCESS_SETUP_HOOK_ENV_VAR
