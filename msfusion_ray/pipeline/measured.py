"""What each message of a pipeline epoch really carried, as seconds for the schedule (schedule.MessageTimes).

The owners report per batch the FLOPs of their three pieces of work and the bytes they sent and received; the
compute nodes report per message the FLOPs they counted and the bytes in and out. Seconds follow from each device's
profile (devices/clock.py): compute = FLOPs / FLOP/s, a hop = bytes over the slower end's link + latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from msfusion_ray.devices.clock import compute_seconds, hop_seconds
from msfusion_ray.devices.profile import DeviceProfile

OwnerLog = Sequence[Mapping[str, int]]  # per batch: size, *_flops, activation/returned/gradient/first_gradient bytes
NodeLog = Sequence[tuple[int, int, str, int, int, int]]  # owner, batch, kind, flops, bytes in, bytes out


@dataclass
class MeasuredTimes:
    owners: Sequence[DeviceProfile]
    nodes: Sequence[DeviceProfile]  # in pipeline order
    aggregator: DeviceProfile
    owner_logs: Mapping[int, OwnerLog]  # owners that trained; the others have no batches
    node_logs: Sequence[NodeLog]
    part_bytes: Mapping[int, int]  # per owner that trained: its first and last parts (each way to the aggregator)

    def __post_init__(self) -> None:
        self.n_owners, self.n_nodes = len(self.owners), len(self.nodes)
        self._node = [{(o, b, kind): (flops, sent) for o, b, kind, flops, _, sent in log} for log in self.node_logs]

    def owner_batches(self, owner: int) -> int:
        return len(self.owner_logs.get(owner, ()))

    def owner_s(self, owner: int, batch: int, kind: str) -> float:
        device, first, last = self.owners[owner], self.nodes[0], self.nodes[-1]
        if kind in ("upload", "download"):
            size = self.part_bytes.get(owner, 0)
            if size == 0:
                return 0.0
            return (hop_seconds(device, self.aggregator, size) if kind == "upload"
                    else hop_seconds(self.aggregator, device, size))
        entry = self.owner_logs[owner][batch]
        if kind in ("front_forward", "back", "front_backward"):
            return compute_seconds(device, entry[f"{kind}_flops"])
        sender, receiver, size = {
            "to_first": (device, first, entry["activation_bytes"]),
            "from_last": (last, device, entry["returned_bytes"]),
            "to_last": (device, last, entry["gradient_bytes"]),
            "from_first": (first, device, entry["first_gradient_bytes"]),
        }[kind]
        return hop_seconds(sender, receiver, size)

    def node_s(self, node: int, owner: int, batch: int, kind: str) -> float:
        return compute_seconds(self.nodes[node], self._node[node][(owner, batch, kind)][0])

    def hop_s(self, node: int, owner: int, batch: int, kind: str) -> float:
        if kind == "forward":
            return hop_seconds(self.nodes[node], self.nodes[node + 1], self._node[node][(owner, batch, kind)][1])
        return hop_seconds(self.nodes[node + 1], self.nodes[node], self._node[node + 1][(owner, batch, kind)][1])
