"""A Ray cluster of real nodes on this machine: a head and worker nodes, each a `ray start --block` process of its
own (its own GCS or raylet, object store, agents and workers) on its own loopback address (127.0.0.2, 127.0.0.3,
...), each worker offering device classes as custom resources (`device:<profile>`), stopped by the process ids it
started (never `ray stop`, which ends every Ray process on the machine, other people's too).

    python cluster/local_cluster.py up --node jetson-nano --node jetson-nano,laptop-cpu --node laptop-cpu
    python cluster/local_cluster.py start --state /tmp/mycluster.json --node laptop-cpu --node laptop-cpu
    python -m msfusion_ray run configs/quickstart.yaml --address ADDRESS --set runtime.device_resources=true
    python cluster/local_cluster.py stop --state /tmp/mycluster.json

`up` starts the cluster, prints its address and stops it on Ctrl-C; `start` leaves it running and writes what
`stop` needs into `--state`.

What Ray requires here, and what it does (Ray 2.60, checked on this project's machine): a worker node joins only
with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1` (with 0, `ray start --address` refuses: "Multi-node Ray clusters are not
supported on Windows and OSX"), so every node starts with 1 and an explicit `--node-ip-address` in 127.0.0.0/8.
Ray's gRPC servers listen on 127.0.0.1 only when the node's address is exactly 127.0.0.1 and on the wildcard
address otherwise: the nodes' addresses and their traffic stay on loopback, but their ports are open on every
interface of the machine while they run. Every port a node takes is probed free first (on all interfaces),
because other Ray clusters run on this machine. The head's GCS declares a node dead after 3 missed health checks
1 s apart (Ray's default: 5 of 3 s each), so a lost node costs seconds, not half a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
OFFLINE = {"RAY_USAGE_STATS_ENABLED": "0", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "no_proxy": "localhost,127.0.0.1,::1", "NO_PROXY": "localhost,127.0.0.1,::1"}
# Every node joins with token authentication (the token of ~/.ray/auth_token, which the head also uses): a worker
# node left to its default would start without it and be refused by the head.
MULTI_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token"}
# The GCS (head) decides a node is dead after this many failed health checks (Ray's config, read from RAY_<name>).
FAST_NODE_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                   "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
START_TIMEOUT_S = 180.0
START_ATTEMPTS = 5


@dataclass
class Node:
    ip: str
    classes: list[str]  # device classes it offers (`device:<name>` resources)
    cpus: float
    pid: int = 0  # the `ray start --block` process: its session holds every process of the node


@dataclass
class LocalCluster:
    """Nodes started by `start`, stopped by `stop` (or `kill_node`): everything in each node's session."""

    nodes: list[Node] = field(default_factory=list)  # the head first
    address: str = ""
    temp_dir: str = ""
    _started: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)  # by address, this process's

    @classmethod
    def plan(cls, workers: list[list[str]], cpus: float = 1.0, head_cpus: float = 0.0) -> "LocalCluster":
        """A head (no CPUs by default: it runs the launcher and the driver actor, which need none) and one worker
        per entry of `workers` (its device classes), on loopback addresses no other Ray node here uses."""
        ips = free_loopback_addresses(1 + len(workers))
        nodes = [Node(ips[0], [], head_cpus)] + [Node(ip, classes, cpus) for ip, classes in zip(ips[1:], workers)]
        return cls(nodes)

    def start(self, object_store_mib: int = 200) -> str:
        """Start the head, then each worker in turn (a node that Ray reports timed out during start-up, as it may on
        a loaded machine, is tried again); the cluster's address once every node is up, or everything stopped."""
        self.temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # short: Ray's socket paths are limited
        try:
            head = self.nodes[0]
            port = free_port()
            self.address = f"{head.ip}:{port}"
            self._start(head, ["--head", f"--port={port}", "--include-dashboard=false",
                               f"--ray-client-server-port={free_port()}"], object_store_mib, FAST_NODE_DEATH)
            for node in self.nodes[1:]:
                self._start(node, [f"--address={self.address}"], object_store_mib, {})
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self.address

    def _start(self, node: Node, role: list[str], object_store_mib: int, extra_env: dict[str, str]) -> None:
        resources = {f"device:{name}": 1000 for name in node.classes}
        env = {**os.environ, **OFFLINE, **MULTI_NODE, **extra_env}
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = [f"{flag}={free_port()}" for flag in PORT_FLAGS]
            command = [RAY, "start", "--block", *role, f"--node-ip-address={node.ip}", f"--num-cpus={node.cpus:g}",
                       f"--resources={json.dumps(resources)}", f"--object-store-memory={object_store_mib * 2**20}",
                       f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *ports]
            with open(self._log_path(node), "ab") as log:
                started = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
            node.pid = started.pid
            self._started[node.ip] = started
            if self._wait_started(node, started):
                return
            if "timed out during startup" not in self.node_log(node) or attempt == START_ATTEMPTS:
                raise RuntimeError(f"node {node.ip} did not start (its log: {self._log_path(node)})")
            self._log_path(node).rename(self._log_path(node).with_suffix(f".failed{attempt}"))

    def _wait_started(self, node: Node, started: subprocess.Popen) -> bool:
        """Whether the node's `ray start` says it started (False: it exited first)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.node_log(node):
                return True
            if started.poll() is not None:
                return False
            time.sleep(0.3)
        raise RuntimeError(f"node {node.ip} did not start within {START_TIMEOUT_S:.0f} s")

    def _log_path(self, node: Node) -> Path:
        return Path(self.temp_dir) / f"node-{node.ip}.log"

    def node_log(self, node: Node) -> str:
        path = self._log_path(node)
        return path.read_text(errors="replace") if path.is_file() else ""

    def processes(self, node: Node) -> list[psutil.Process]:
        """Every process of the node: those in the session its `ray start` process opened."""
        found = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == node.pid:
                    found.append(process)
            except (OSError, psutil.Error):
                continue
        return found

    def node_with(self, title: str) -> Node | None:
        """The worker node one of whose processes has this title (e.g. `ray::Host`, a host actor)."""
        for node in self.nodes[1:]:
            for process in self.processes(node):
                try:
                    if " ".join(process.cmdline()).startswith(title):
                        return node
                except psutil.Error:
                    continue
        return None

    def kill_node(self, node: Node) -> list[int]:
        """Lose a node at once: SIGKILL to its raylet, its workers and every other process of it."""
        return _kill(self.processes(node), signal.SIGKILL)

    def stop(self, keep_logs: bool = False) -> None:
        """End every node this cluster started, workers first: SIGTERM, then SIGKILL for what is left after 10 s;
        then remove its temporary directory (its sessions' logs) unless `keep_logs`."""
        for node in reversed(self.nodes):
            if node.pid:
                processes = self.processes(node)
                _kill(processes, signal.SIGTERM)
                _, alive = psutil.wait_procs(processes, timeout=10)
                _kill(alive, signal.SIGKILL)
                psutil.wait_procs(alive, timeout=10)
        for started in self._started.values():
            started.poll()  # reaped, where this process started it
        if self.temp_dir and not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this cluster still alive: in a node's session, or naming its temporary directory (Ray's
        session directory lives there) on their command line. Empty once `stop` has ended them all."""
        starters = {node.pid for node in self.nodes if node.pid}
        found = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) in starters or (self.temp_dir and any(self.temp_dir in part
                                                                                  for part in process.cmdline())):
                    found.append(process)
            except (OSError, psutil.Error):
                continue
        return found

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"nodes": [asdict(n) for n in self.nodes], "address": self.address,
                                    "temp_dir": self.temp_dir}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "LocalCluster":
        data = json.loads(path.read_text())
        return cls([Node(**n) for n in data["nodes"]], data["address"], data["temp_dir"])


def _kill(processes: list[psutil.Process], signum: int) -> list[int]:
    killed = []
    for process in processes:
        try:
            process.send_signal(signum)
            killed.append(process.pid)
        except psutil.Error:
            continue
    return killed


def free_port() -> int:
    """A TCP port nothing listens on, on any interface (Ray's nodes here listen on the wildcard address)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::", 0))
        return probe.getsockname()[1]


def free_loopback_addresses(count: int, first: int = 2) -> list[str]:
    """`count` addresses 127.0.0.N (N >= `first`) that no Ray node on this machine was started with."""
    taken = set()
    for process in psutil.process_iter():
        try:
            for arg in process.cmdline():
                for prefix in ("--node-ip-address=", "--node_ip_address="):
                    if arg.startswith(prefix):
                        taken.add(arg[len(prefix):])
        except psutil.Error:
            continue
    free = [f"127.0.0.{n}" for n in range(first, 255) if f"127.0.0.{n}" not in taken]
    if len(free) < count:
        raise RuntimeError(f"only {len(free)} free loopback addresses for {count} nodes")
    return free[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "start", "stop"))
    parser.add_argument("--node", action="append", default=[], metavar="CLASS[,CLASS...]",
                        help="a worker node offering these device classes (repeat: one per node; 3 or more)")
    parser.add_argument("--cpus", type=float, default=1.0, help="logical CPUs of each worker node")
    parser.add_argument("--object-store-mib", type=int, default=200)
    parser.add_argument("--keep-logs", action="store_true", help="stop: keep the nodes' logs (printed where)")
    parser.add_argument("--state", type=Path, help="start: where to write what stop needs; stop: that file")
    args = parser.parse_args(argv)
    if args.command == "stop":
        if args.state is None:
            parser.error("stop needs --state")
        LocalCluster.load(args.state).stop(args.keep_logs)
        args.state.unlink()
        return 0
    if args.command == "start" and args.state is None:
        parser.error("start needs --state")
    cluster = LocalCluster.plan([[c for c in spec.split(",") if c] for spec in args.node], args.cpus)
    address = cluster.start(args.object_store_mib)
    for node in cluster.nodes:
        print(f"{'head' if node is cluster.nodes[0] else 'node'} {node.ip}: pid {node.pid}, "
              f"{node.cpus:g} CPUs, classes {','.join(node.classes) or '-'}")
    print(f"address: {address}")
    if args.command == "start":
        cluster.save(args.state)
        return 0
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop(args.keep_logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
