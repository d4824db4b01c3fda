"""The virtual timeline of a run, from its records: what each device did when, how stale the updates were, and how
much of the fleet's time went idle.

Every task row carries `vt_start`, `vt_end` and its device time split into latency + download, compute and upload
(in that order on the device); a round row carries its aggregation instant `vt_end`. Nothing here is estimated.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.runs import RunRecords  # noqa: E402

LANE_COLOURS = {"communicating": "tab:blue", "training": "tab:green", "dropped": "tab:red",
                "unavailable": "tab:gray", "refused": "tab:orange", "waiting": "whitesmoke"}
MAX_LANES = 40


def task_segments(run: RunRecords, until_s: float | None = None) -> pd.DataFrame:
    """One row per segment of device activity: participant, kind (communicating, training, dropped, unavailable,
    refused), start_s, duration_s. Waiting is what lies between them."""
    rows = run.participants
    if not len(rows) or "vt_start" not in rows:
        return pd.DataFrame(columns=["participant", "kind", "start_s", "duration_s"])
    ends = run.rounds.set_index("round")["vt_end"] if "vt_end" in run.rounds else pd.Series(dtype=float)
    segments = []
    for row in rows.itertuples():
        if np.isnan(row.vt_start) or (until_s is not None and row.vt_start >= until_s):
            continue
        if row.status == "unavailable":
            end = float(ends.get(row.round, row.vt_end))
            segments.append((row.participant, "unavailable", row.vt_start, max(0.0, end - row.vt_start)))
            continue
        if row.status in ("oom", "error", "timeout"):
            segments.append((row.participant, "refused", row.vt_start, max(0.0, row.vt_end - row.vt_start)))
            continue
        latency = max(0.0, row.device_comm_s - row.device_download_s - row.device_upload_s)
        work = "dropped" if row.status == "dropped" else "training"
        clock = row.vt_start
        for kind, length in (("communicating", latency + row.device_download_s), (work, row.device_compute_s),
                             ("communicating", row.device_upload_s)):
            if length > 0:
                segments.append((row.participant, kind, clock, length))
                clock += length
    return pd.DataFrame(segments, columns=["participant", "kind", "start_s", "duration_s"])


def staleness_counts(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """Per group: how many aggregated updates arrived with each staleness (group, staleness, updates, share)."""
    frames = []
    for run in runs:
        ok = run.participants[run.participants["status"] == "ok"] if len(run.participants) else run.participants
        if "staleness" in ok and len(ok):
            frames.append(pd.DataFrame({"group": run.label, "staleness": ok["staleness"].astype(int)}))
    if not frames:
        return pd.DataFrame(columns=["group", "staleness", "updates", "share"])
    counts = pd.concat(frames).groupby(["group", "staleness"], sort=False).size().rename("updates").reset_index()
    counts["share"] = counts["updates"] / counts.groupby("group")["updates"].transform("sum")
    return counts.sort_values(["group", "staleness"], kind="stable", ignore_index=True)


def idle_share(run: RunRecords) -> float:
    """Share of the fleet's device time, from the start to the last aggregation, that no task used."""
    if not len(run.rounds) or "vt_end" not in run.rounds:
        return float("nan")
    horizon = float(run.rounds["vt_end"].max())
    if horizon <= 0:
        return float("nan")
    segments = task_segments(run, until_s=horizon)
    busy = segments[segments["kind"].isin(["communicating", "training", "dropped"])]
    used = (np.minimum(busy["start_s"] + busy["duration_s"], horizon) - busy["start_s"]).clip(lower=0).sum()
    return float(1.0 - used / (horizon * run.fleet_size))


def figure_virtual_timeline(run: RunRecords, steps: int = 8) -> Figure | None:
    """The first `steps` aggregations of a run on the virtual clock: one lane per participant (communicating,
    training, dropped, unavailable, refused; waiting in between), aggregation instants as vertical lines."""
    if not len(run.rounds) or "vt_end" not in run.rounds:
        return None
    instants = run.rounds.sort_values("round")["vt_end"].to_numpy()[:steps]
    if not len(instants):
        return None
    until = float(instants[-1])
    segments = task_segments(run, until_s=until)
    if not len(segments) or until <= 0:
        return None
    lanes = sorted(segments["participant"].unique())[:MAX_LANES]
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.3 * len(lanes) + 1.6)))
    ax.barh([str(p) for p in lanes], until, color=LANE_COLOURS["waiting"])
    for kind, frame in segments[segments["participant"].isin(lanes)].groupby("kind"):
        ax.barh(frame["participant"].astype(str), frame["duration_s"], left=frame["start_s"],
                color=LANE_COLOURS[kind], edgecolor="white", linewidth=0.3)
    for instant in instants:
        ax.axvline(instant, color="black", linewidth=0.8, linestyle=":")
    handles = [Patch(color=c, label=k) for k, c in LANE_COLOURS.items()]
    handles.append(plt.Line2D([], [], color="black", linestyle=":", label="aggregation"))
    ax.legend(handles=handles, fontsize=8, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.set(xlim=(0, until), xlabel="virtual time (s)", ylabel="participant",
           title=f"{run.cell or run.run_dir.name} ({run.label}): the first {len(instants)} aggregations")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def figure_staleness(runs: Sequence[RunRecords]) -> Figure | None:
    counts = staleness_counts(runs)
    if not len(counts) or counts["staleness"].max() == 0:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = list(dict.fromkeys(counts["group"]))
    width = 0.8 / len(groups)
    for k, group in enumerate(groups):
        frame = counts[counts["group"] == group]
        ax.bar(frame["staleness"] + (k - (len(groups) - 1) / 2) * width, frame["share"], width=width, label=group)
    ax.set(xlabel="staleness (global versions)", ylabel="share of aggregated updates",
           title="Staleness of aggregated updates")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
