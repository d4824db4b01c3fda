"""The records a run writes as it goes: one row per (round, participant) and one per round, as Parquet.

Each round's rows land in their own files (records/participants/round-NNNNNN.parquet and
records/rounds/round-NNNNNN.parquet), written atomically, so a run that stops keeps every finished round readable
and a resumed run simply replaces the rounds after its checkpoint. Nothing about cost is reconstructed afterwards:
every figure is measured or computed while the round runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

STATUSES = ("ok", "oom", "unavailable", "error", "timeout")


@dataclass
class ParticipantRoundRow:
    run_id: str
    round: int
    participant: int
    device: str
    host: int
    status: str  # one of STATUSES
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
    device_clock_s: float = 0.0  # the participant's virtual clock after this round
    mem_planned_bytes: int = 0
    mem_cap_bytes: int = 0
    mem_peak_rss_bytes: int = 0  # rise of the host process's resident set while training
    mem_peak_tensor_bytes: int = 0  # live-tensor peak of a measured training step
    train_loss: float = math.nan
    extra_loss: float = math.nan
    message: str = ""


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
    samples_total: int = 0
    flops_total: int = 0
    flops_max: int = 0
    bytes_down_total: int = 0
    bytes_up_total: int = 0
    bytes_p2p_total: int = 0
    device_time_s: float = 0.0  # a synchronous round lasts as long as its slowest participant
    wall_round_s: float = 0.0
    wall_eval_s: float = 0.0
    test_accuracy: float = math.nan
    test_loss: float = math.nan
    test_perplexity: float = math.nan
    val_accuracy: float = math.nan
    val_loss: float = math.nan
    val_perplexity: float = math.nan
    strategy_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def summarise(cls, run_id: str, round_idx: int, strategy: str, rows: Iterable[ParticipantRoundRow],
                  **values: Any) -> "RoundRow":
        rows = list(rows)
        trained = [r for r in rows if r.status == "ok"]
        return cls(
            run_id=run_id, round=round_idx, strategy=strategy,
            participants_planned=sum(r.status != "unavailable" for r in rows),
            participants_ok=len(trained),
            participants_oom=sum(r.status == "oom" for r in rows),
            participants_unavailable=sum(r.status == "unavailable" for r in rows),
            participants_failed=sum(r.status in ("error", "timeout") for r in rows),
            samples_total=sum(r.samples for r in trained),
            flops_total=sum(r.flops for r in rows),
            flops_max=max((r.flops for r in rows), default=0),
            bytes_down_total=sum(r.bytes_down for r in rows),
            bytes_up_total=sum(r.bytes_up for r in rows),
            bytes_p2p_total=sum(r.bytes_p2p for r in rows),
            device_time_s=max((r.device_time_s for r in rows), default=0.0),
            **values,
        )

    def flat(self) -> dict[str, Any]:
        data = asdict(self)
        metrics = data.pop("strategy_metrics")
        data.update({f"strategy_{k}": float(v) for k, v in metrics.items()})
        return data


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class RecordWriter:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "records"

    def _path(self, kind: str, round_idx: int) -> Path:
        return self.root / kind / f"round-{round_idx:06d}.parquet"

    def write_round(self, participant_rows: list[ParticipantRoundRow], round_row: RoundRow) -> None:
        frame = pd.DataFrame([asdict(r) for r in participant_rows], columns=list(ParticipantRoundRow.__annotations__))
        _write_atomic(frame, self._path("participants", round_row.round))
        _write_atomic(pd.DataFrame([round_row.flat()]), self._path("rounds", round_row.round))

    def discard_after(self, round_idx: int) -> None:
        """Drop rounds written after a checkpoint (a resumed run writes them again)."""
        for kind in ("participants", "rounds"):
            for path in (self.root / kind).glob("round-*.parquet"):
                if int(path.stem.split("-")[1]) > round_idx:
                    path.unlink()


def _read(run_dir: str | Path, kind: str) -> pd.DataFrame:
    paths = sorted((Path(run_dir) / "records" / kind).glob("round-*.parquet"))
    if not paths:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def read_participant_rows(run_dir: str | Path) -> pd.DataFrame:
    return _read(run_dir, "participants")


def read_round_rows(run_dir: str | Path) -> pd.DataFrame:
    return _read(run_dir, "rounds")
