"""The records a run writes as it goes: one row per (round, participant) and one per round, as Parquet.

Each round's rows land in their own files (records/participants/round-NNNNNN.parquet and
records/rounds/round-NNNNNN.parquet), written atomically, so a run that stops keeps every finished round readable
and a resumed run simply replaces the rounds after its checkpoint. Nothing about cost is reconstructed afterwards:
every figure is measured or computed while the round runs. Where hosts train on GPUs, one row per host and round
(records/hosts/round-NNNNNN.parquet) says what each host's GPU did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from msfusion_ray.files import write_atomic

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are made: host actors make rows, never frames

# ok: trained and aggregated; oom: refused by its memory guard (oom_source planner) or killed at its memory limit
# (kernel: enforced devices); unavailable: off when asked; error: failed;
# timeout: overran runtime.task_timeout_s; dropped: went off (availability window) while training, the work lost;
# stale: trained, but arrived more than the strategy's max_staleness versions late and was not aggregated.
STATUSES = ("ok", "oom", "unavailable", "error", "timeout", "dropped", "stale")


@dataclass
class ParticipantRoundRow:
    """One participant task: `round` is the step (synchronous round, aggregation of the buffer, pipeline epoch)
    whose records it belongs to."""

    run_id: str
    round: int
    participant: int
    device: str
    host: int
    status: str  # one of STATUSES
    role: str = "participant"  # or a pipeline's "compute" node / "aggregator"
    task: int = -1  # the run's sequence number of this task (-1: no task was handed out)
    base_version: int = -1  # the global model version it trained from
    staleness: int = 0  # global versions published between its hand-out and its arrival
    rate: float = math.nan  # the splitting rate planned for this participant (none when it was unavailable)
    param_fraction: float = math.nan  # share of the global model's parameters it was asked to hold
    samples: int = 0
    steps: int = 0
    tokens: int = 0  # predicted tokens trained on (language models; 0 otherwise)
    flops: int = 0  # forward + backward, counted by FlopCounterMode
    bytes_down: int = 0  # arrays received (weights and index maps)
    bytes_up: int = 0  # arrays sent back
    bytes_p2p: int = 0  # what a peer-to-peer exchange of the same update would send (schemes that define it)
    wall_setup_s: float = 0.0
    wall_train_s: float = 0.0
    wall_serialize_s: float = 0.0
    wall_total_s: float = 0.0
    device_compute_s: float = 0.0
    device_comm_s: float = 0.0
    device_time_s: float = 0.0
    device_download_s: float = 0.0
    device_upload_s: float = 0.0
    predicted_device_s: float = math.nan  # what the engine predicted before the task ran (nan: no prediction)
    compute_s_predicted: float = math.nan  # the time model's compute seconds (= device_compute_s unless measured)
    vt_start: float = math.nan  # run's virtual time at which the participant was handed the model
    vt_end: float = math.nan  # ... and at which its work ended (or was lost)
    device_clock_s: float = 0.0  # the participant's device seconds spent so far in the run (busy time)
    device_wait_s: float = 0.0  # after its work, waiting for the round's barrier or the buffer's aggregation
    # joules (msfusion_ray.devices.energy): computing, sending and receiving, waiting; NaN where the profile has no
    # power figure for that part
    energy_compute_j: float = math.nan
    energy_comm_j: float = math.nan
    energy_idle_j: float = math.nan
    energy_j: float = math.nan
    mem_planned_bytes: int = 0
    mem_cap_bytes: int = 0
    mem_peak_rss_bytes: int = 0  # rise of the host process's resident set while training
    mem_peak_tensor_bytes: int = 0  # live-tensor peak of a measured training step
    mem_peak_gpu_bytes: int = 0  # on a GPU: torch.cuda.max_memory_allocated during the task (reset at its start)
    oom_source: str = ""  # status oom: "planner" (refused before it started) or "kernel" (killed at its limit)
    cpu_quota: float = math.nan  # enforced devices: CPU cores its host had while it trained
    cpu_throttled_s: float = 0.0  # ... how long the kernel held the host back for that quota
    mem_limit_bytes: int = 0  # ... the memory limit it trained under: its cap on top of what the host held
    mem_baseline_bytes: int = 0  # ... what the host held before the task (not the device's memory)
    mem_peak_group_bytes: int = 0  # ... the most its group held during the task over its start: the process's need
    gpu_samples: int = 0  # NVML samples of the host's GPU taken while the task ran (0: CPU, or no NVML)
    gpu_total_bytes: int = 0  # the GPU's memory
    gpu_used_bytes: int = 0  # the most of it in use (every process's) in those samples
    gpu_util_pct: float = math.nan  # the GPU's mean utilisation in those samples
    gpu_util_max_pct: float = math.nan
    train_loss: float = math.nan
    extra_loss: float = math.nan
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # the procedure's own figures (open, like Flower's)

    def flat(self) -> dict[str, Any]:
        """The row as a record: its fields, and each metric as a `metric_` column. Read field by field, not with
        `dataclasses.asdict`, which deep-copies every value: 0.1 ms a row, a tenth of a second of the driver's
        between rounds of 1000 participants."""
        data = {name: getattr(self, name) for name in _PARTICIPANT_FIELDS}
        data.update({f"metric_{k}": float(v) for k, v in self.metrics.items()})
        return data


_PARTICIPANT_FIELDS = tuple(f.name for f in fields(ParticipantRoundRow) if f.name != "metrics")


@dataclass
class RoundRow:
    run_id: str
    round: int
    strategy: str
    participants_planned: int = 0
    participants_ok: int = 0
    participants_oom: int = 0
    participants_unavailable: int = 0
    participants_failed: int = 0
    participants_dropped: int = 0
    participants_stale: int = 0
    updates_aggregated: int = 0
    staleness_mean: float = math.nan  # over aggregated updates
    staleness_max: int = 0
    samples_total: int = 0
    flops_total: int = 0
    flops_max: int = 0
    bytes_down_total: int = 0
    bytes_up_total: int = 0
    bytes_p2p_total: int = 0
    device_time_s: float = 0.0  # the longest participant task of the step
    energy_j_total: float = math.nan  # joules of every task of the step (NaN where a device has no power figures)
    energy_compute_j_total: float = math.nan
    energy_comm_j_total: float = math.nan
    energy_idle_j_total: float = math.nan
    vt_start: float = 0.0  # run's virtual time when the step began (the previous aggregation)
    vt_end: float = 0.0  # ... and of its aggregation: a synchronous round ends with its slowest participant
    device_utilisation: float = math.nan  # device seconds worked within the step / (its length x participants)
    wall_round_s: float = 0.0
    wall_eval_s: float = 0.0
    test_accuracy: float = math.nan
    test_loss: float = math.nan
    test_perplexity: float = math.nan
    val_accuracy: float = math.nan
    val_loss: float = math.nan
    val_perplexity: float = math.nan
    strategy_metrics: dict[str, float] = field(default_factory=dict)
    # the evaluation's other figures, named by split: each early exit's (test_exit2_accuracy, val_exit4_perplexity)
    eval_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def summarise(cls, run_id: str, round_idx: int, strategy: str, rows: Iterable[ParticipantRoundRow],
                  **values: Any) -> "RoundRow":
        rows = list(rows)  # costs count every row; outcomes only the participants' (not a pipeline's compute nodes)
        asked = [r for r in rows if r.role == "participant"]
        trained = [r for r in asked if r.status == "ok"]
        return cls(
            run_id=run_id, round=round_idx, strategy=strategy,
            participants_planned=sum(r.status != "unavailable" for r in asked),
            participants_ok=len(trained),
            participants_oom=sum(r.status == "oom" for r in asked),
            participants_unavailable=sum(r.status == "unavailable" for r in asked),
            participants_failed=sum(r.status in ("error", "timeout") for r in asked),
            participants_dropped=sum(r.status == "dropped" for r in asked),
            participants_stale=sum(r.status == "stale" for r in asked),
            updates_aggregated=len(trained),
            staleness_mean=sum(r.staleness for r in trained) / len(trained) if trained else math.nan,
            staleness_max=max((r.staleness for r in trained), default=0),
            samples_total=sum(r.samples for r in trained),
            flops_total=sum(r.flops for r in rows),
            flops_max=max((r.flops for r in rows), default=0),
            bytes_down_total=sum(r.bytes_down for r in rows),
            bytes_up_total=sum(r.bytes_up for r in rows),
            bytes_p2p_total=sum(r.bytes_p2p for r in rows),
            device_time_s=max((r.device_time_s for r in rows), default=0.0),
            energy_j_total=sum(r.energy_j for r in rows),
            energy_compute_j_total=sum(r.energy_compute_j for r in rows),
            energy_comm_j_total=sum(r.energy_comm_j for r in rows),
            energy_idle_j_total=sum(r.energy_idle_j for r in rows),
            **values,
        )

    def flat(self) -> dict[str, Any]:
        data = asdict(self)
        metrics = data.pop("strategy_metrics")
        data.update({f"strategy_{k}": float(v) for k, v in metrics.items()})
        data.update({k: float(v) for k, v in data.pop("eval_metrics").items()})
        return data


@dataclass
class HostStepRow:
    """One host actor in one step, where hosts train on GPUs: the GPU share it holds and what NVML saw of its GPU
    while its tasks of the step ran (tasks that ended in the step)."""

    run_id: str
    round: int
    host: int
    device: str  # what it trains on: "cuda", or "cpu" (a host that could not use the GPU Ray gave it)
    gpu: str = ""  # the GPU's UUID (hosts with the same one share a GPU), or Ray's GPU ids
    gpu_name: str = ""
    gpu_fraction: float = 0.0  # of the GPU, as asked of Ray (runtime.gpus_per_host)
    gpu_budget_bytes: int = 0  # what its work may plan: its share of the GPU's memory less a CUDA context
    hosts_on_gpu: int = 0  # hosts of the run on the same GPU
    tasks: int = 0
    tasks_ok: int = 0
    tasks_oom: int = 0
    wall_busy_s: float = 0.0  # wall seconds of its tasks
    mem_peak_gpu_bytes: int = 0  # the largest task peak (torch.cuda.max_memory_allocated)
    gpu_samples: int = 0
    gpu_total_bytes: int = 0
    gpu_used_max_bytes: int = 0
    gpu_util_mean_pct: float = math.nan  # over every sample taken while its tasks ran
    gpu_util_max_pct: float = math.nan

    @classmethod
    def summarise(cls, run_id: str, round_idx: int, host: dict[str, Any], hosts_on_gpu: int,
                  rows: Iterable[ParticipantRoundRow]) -> "HostStepRow":
        """`host`: what the host said of itself (`Host.describe`); `rows`: the step's rows of its tasks."""
        rows = [r for r in rows if r.host == host["host"] and r.task >= 0]
        samples = sum(r.gpu_samples for r in rows)
        util_sum = sum(r.gpu_util_pct * r.gpu_samples for r in rows if r.gpu_samples)
        util_max = [r.gpu_util_max_pct for r in rows if r.gpu_samples]
        return cls(
            run_id=run_id, round=round_idx, host=host["host"], device=host["device"], gpu=host["gpu"],
            gpu_name=host["gpu_name"], gpu_fraction=host["gpu_fraction"], gpu_budget_bytes=host["gpu_budget_bytes"],
            hosts_on_gpu=hosts_on_gpu, tasks=len(rows), tasks_ok=sum(r.status == "ok" for r in rows),
            tasks_oom=sum(r.status == "oom" for r in rows), wall_busy_s=sum(r.wall_total_s for r in rows),
            mem_peak_gpu_bytes=max((r.mem_peak_gpu_bytes for r in rows), default=0), gpu_samples=samples,
            gpu_total_bytes=max((r.gpu_total_bytes for r in rows), default=0),
            gpu_used_max_bytes=max((r.gpu_used_bytes for r in rows), default=0),
            gpu_util_mean_pct=util_sum / samples if samples else math.nan,
            gpu_util_max_pct=max(util_max) if util_max else math.nan,
        )


def history_entry(row: Any) -> dict[str, float]:
    """A step's figures as the run's history (summary.json) keeps them, from its round row or one read back from
    the records (the same names; records written before energy have none)."""
    return {"round": int(row.round), "vt": float(row.vt_end), "accuracy": float(row.test_accuracy),
            "loss": float(row.test_loss), "perplexity": float(row.test_perplexity),
            "val_perplexity": float(row.val_perplexity), "energy_j": float(getattr(row, "energy_j_total", math.nan))}


def host_rows(run_id: str, round_idx: int, hosts: list[dict[str, Any]],
              rows: list[ParticipantRoundRow]) -> list[HostStepRow]:
    """A step's row for every host, with how many of the run's hosts share its GPU."""
    sharing: dict[str, int] = {}
    for host in hosts:
        sharing[host["gpu"]] = sharing.get(host["gpu"], 0) + 1
    return [HostStepRow.summarise(run_id, round_idx, host, sharing[host["gpu"]], rows) for host in hosts]


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """The frame written whole or not at all (a full disk: `WriteFailed` naming the file, nothing left of it)."""
    write_atomic(path, lambda temporary: frame.to_parquet(temporary, index=False))


class RecordWriter:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "records"

    def _path(self, kind: str, round_idx: int) -> Path:
        return self.root / kind / f"round-{round_idx:06d}.parquet"

    def write_round(self, participant_rows: list[ParticipantRoundRow], round_row: RoundRow) -> None:
        import pandas as pd

        columns = [c for c in ParticipantRoundRow.__annotations__ if c != "metrics"]
        frame = pd.DataFrame([r.flat() for r in participant_rows])
        frame = frame.reindex(columns=columns + sorted(set(frame.columns) - set(columns)))
        _write_atomic(frame, self._path("participants", round_row.round))
        _write_atomic(pd.DataFrame([round_row.flat()]), self._path("rounds", round_row.round))

    def write_fleet(self, parts: Iterable[dict[str, Any]]) -> None:
        """The fleet as the run drew it, once per run (records/fleet.parquet): a row per participant, written a
        part (of columns) at a time, each a row group, so that a fleet of millions is never a whole table in
        memory."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(temporary: Path) -> None:
            writer = None
            try:
                for part in parts:
                    table = pa.Table.from_pandas(pd.DataFrame(part), preserve_index=False)
                    writer = writer or pq.ParquetWriter(temporary, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()

        write_atomic(self.root / "fleet.parquet", write)

    def write_hosts(self, round_idx: int, rows: list[HostStepRow]) -> None:
        import pandas as pd

        _write_atomic(pd.DataFrame([asdict(r) for r in rows]), self._path("hosts", round_idx))

    def discard_after(self, round_idx: int) -> None:
        """Drop rounds written after a checkpoint (a resumed run writes them again)."""
        for kind in ("participants", "rounds", "hosts"):
            for path in (self.root / kind).glob("round-*.parquet"):
                if int(path.stem.split("-")[1]) > round_idx:
                    path.unlink()


def _read(run_dir: str | Path, kind: str) -> pd.DataFrame:
    import pandas as pd

    paths = sorted((Path(run_dir) / "records" / kind).glob("round-*.parquet"))
    if not paths:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def read_participant_rows(run_dir: str | Path) -> pd.DataFrame:
    return _read(run_dir, "participants")


def read_round_rows(run_dir: str | Path) -> pd.DataFrame:
    return _read(run_dir, "rounds")


def read_fleet(run_dir: str | Path) -> pd.DataFrame:
    """Each participant's drawn device figures (empty for runs written before the table existed)."""
    import pandas as pd

    path = Path(run_dir) / "records" / "fleet.parquet"
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def read_host_rows(run_dir: str | Path) -> pd.DataFrame:
    """Per host and step, where the run's hosts trained on GPUs (empty otherwise)."""
    return _read(run_dir, "hosts")
