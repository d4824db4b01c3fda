"""The numbers behind every plot and table of a report, computed from the records alone.

Plain pandas over `RunRecords`, so each aggregate can be checked on a few hand-made rows. Figures stay in their
recorded units (FLOPs, bytes, seconds); plots and tables convert them for reading.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from analysis.runs import RunRecords, cost_curves, group_names

OUTCOMES = ("ok", "oom", "timeout", "error", "unavailable")


def metric_of(runs: Sequence[RunRecords]) -> str:
    """'perplexity' where any run evaluated one (language models), else 'accuracy'."""
    for run in runs:
        if "test_perplexity" in run.rounds and run.rounds["test_perplexity"].notna().any():
            return "perplexity"
    return "accuracy"


def seed_spread(runs: Sequence[RunRecords], x: str, metric: str) -> pd.DataFrame:
    """Per group and round: `x` (a column of `cost_curves`) averaged over the group's runs, and the metric's mean,
    min and max over them (the band). Rounds without an evaluation are left out."""
    frames = []
    for run in runs:
        curve = cost_curves(run)
        frames.append(pd.DataFrame({"group": run.label, "round": curve["round"], "x": curve[x],
                                    "y": curve[metric]}).dropna(subset=["y"]))
    if not frames:
        return pd.DataFrame(columns=["group", "round", "x", "mean", "min", "max", "runs"])
    spread = pd.concat(frames).groupby(["group", "round"], sort=False).agg(
        x=("x", "mean"), mean=("y", "mean"), min=("y", "min"), max=("y", "max"), runs=("y", "size"))
    return spread.reset_index()


def run_table(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """One row per run: what it was, how far it got, its final and best metric, and its total cost."""
    metric = metric_of(runs)
    column = f"test_{metric}"
    rows = []
    for run in runs:
        evaluated = run.rounds[column].dropna() if column in run.rounds else pd.Series(dtype=float)
        best = evaluated.min() if metric == "perplexity" else evaluated.max()
        rows.append({
            "run": run.cell or run.run_dir.name, "group": run.label, "seed": run.seed,
            "participants": run.fleet_size, "status": run.summary.get("status", "unknown"),
            "rounds": int(run.rounds["round"].max()) if len(run.rounds) else 0,
            f"final {metric}": float(evaluated.iloc[-1]) if len(evaluated) else np.nan,
            f"best {metric}": float(best) if len(evaluated) else np.nan,
            "flops_total": int(run.rounds["flops_total"].sum()) if len(run.rounds) else 0,
            "bytes_total": int((run.rounds["bytes_down_total"] + run.rounds["bytes_up_total"]).sum())
            if len(run.rounds) else 0,
            "wall_s": float((run.rounds["wall_round_s"] + run.rounds["wall_eval_s"]).sum()) if len(run.rounds)
            else 0.0,
        })
    return pd.DataFrame(rows)


def scalability(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """One row per run, grouped without the fleet size: the cost of one trained participant-round (mean FLOPs and
    bytes both ways), the peak memory any participant used, and the median round's wall and device time."""
    rows = []
    for run, group in zip(runs, group_names(runs, besides=("fleet.size",))):
        trained = run.participants[run.participants["status"] == "ok"] if len(run.participants) else run.participants
        rounds = run.rounds
        rows.append({
            "group": group, "participants": run.fleet_size, "seed": run.seed,
            "cohort": float(rounds["participants_planned"].mean()) if len(rounds) else np.nan,
            "flops_per_participant": float(trained["flops"].mean()) if len(trained) else np.nan,
            "bytes_per_participant": float((trained["bytes_down"] + trained["bytes_up"]).mean())
            if len(trained) else np.nan,
            "peak_tensor_bytes": float(trained["mem_peak_tensor_bytes"].max()) if len(trained) else np.nan,
            "peak_rss_bytes": float(trained["mem_peak_rss_bytes"].max()) if len(trained) else np.nan,
            "wall_round_s": float(rounds["wall_round_s"].median()) if len(rounds) else np.nan,
            "device_round_s": float(rounds["device_time_s"].median()) if len(rounds) else np.nan,
        })
    return pd.DataFrame(rows)


SCALABILITY_FIGURES = ("flops_per_participant", "bytes_per_participant", "peak_tensor_bytes", "peak_rss_bytes",
                       "wall_round_s", "device_round_s", "cohort")


def scalability_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Per group and fleet size: each figure's mean, min and max over the runs (seeds)."""
    aggregations = {f"{c}_{stat}": (c, stat) for c in SCALABILITY_FIGURES for stat in ("mean", "min", "max")}
    return (table.groupby(["group", "participants"], sort=False).agg(runs=("seed", "size"), **aggregations)
            .reset_index().sort_values(["group", "participants"], kind="stable", ignore_index=True))


def last_trained_round(run: RunRecords) -> int | None:
    ok = run.participants[run.participants["status"] == "ok"] if len(run.participants) else run.participants
    return int(ok["round"].max()) if len(ok) else None


def device_timeline(run: RunRecords, round_idx: int) -> pd.DataFrame:
    """The round on the virtual clock, one row per participant asked to train: compute, then communication
    (download, upload, latency), then waiting for the round's slowest participant (a synchronous round ends
    with it)."""
    rows = run.participants[(run.participants["round"] == round_idx) & (run.participants["status"] != "unavailable")]
    rows = rows.sort_values("participant")
    end = rows["device_time_s"].max() if len(rows) else 0.0
    return pd.DataFrame({"participant": rows["participant"].to_numpy(), "device": rows["device"].to_numpy(),
                         "status": rows["status"].to_numpy(), "compute_s": rows["device_compute_s"].to_numpy(),
                         "communicate_s": rows["device_comm_s"].to_numpy(),
                         "wait_s": (end - rows["device_time_s"]).to_numpy()})


HOST_PHASES = ("setup", "train", "serialise", "other", "idle")


def host_timeline(run: RunRecords, round_idx: int) -> pd.DataFrame:
    """The round in wall time, per host actor: its participants one after another (a host runs one at a time;
    shown in participant order, the order the round's tasks were sent in), each as setup (receive the payload,
    build the model), train, serialise and other (memory check, bookkeeping), then idle until the driver closed
    the round (wall_round_s). One row per segment: host, participant, phase, start_s, duration_s."""
    rows = run.participants[(run.participants["round"] == round_idx) & (run.participants["status"] != "unavailable")]
    round_rows = run.rounds[run.rounds["round"] == round_idx]
    wall_round = float(round_rows["wall_round_s"].iloc[0]) if len(round_rows) else 0.0
    segments = []
    for host, members in rows.sort_values("participant").groupby("host", sort=True):
        clock = 0.0
        for row in members.itertuples():
            parts = {"setup": row.wall_setup_s, "train": row.wall_train_s, "serialise": row.wall_serialize_s}
            parts["other"] = max(0.0, row.wall_total_s - sum(parts.values()))
            for phase, duration in parts.items():
                segments.append((int(host), int(row.participant), phase, clock, float(duration)))
                clock += duration
        segments.append((int(host), -1, "idle", clock, max(0.0, wall_round - clock)))
    return pd.DataFrame(segments, columns=["host", "participant", "phase", "start_s", "duration_s"])


def memory_by_device(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """Per group and device class: the memory cap, the largest planned footprint, the largest measured peaks
    (live tensors; rise of the host's resident set) and how often work was refused for memory."""
    frames = []
    for run in runs:
        rows = run.participants
        if len(rows):
            frames.append(rows.assign(group=run.label))
    if not frames:
        return pd.DataFrame(columns=["group", "device", "cap_bytes", "planned_bytes", "peak_tensor_bytes",
                                     "peak_rss_bytes", "trained", "oom"])
    rows = pd.concat(frames, ignore_index=True)
    asked = rows[rows["status"].isin(["ok", "oom"])]
    trained = rows[rows["status"] == "ok"]
    keys = ["group", "device"]
    table = pd.DataFrame({
        "cap_bytes": rows.groupby(keys, sort=False)["mem_cap_bytes"].max(),
        "planned_bytes": asked.groupby(keys, sort=False)["mem_planned_bytes"].max(),
        "peak_tensor_bytes": trained.groupby(keys, sort=False)["mem_peak_tensor_bytes"].max(),
        "peak_rss_bytes": trained.groupby(keys, sort=False)["mem_peak_rss_bytes"].max(),
        "trained": trained.groupby(keys, sort=False).size(),
        "oom": asked[asked["status"] == "oom"].groupby(keys, sort=False).size(),
    })
    table[["trained", "oom"]] = table[["trained", "oom"]].fillna(0).astype(int)
    return table.reset_index()


ENERGY_PARTS = ("energy_compute_j", "energy_comm_j", "energy_idle_j", "energy_j")


def _sum_or_nan(values: pd.Series) -> float:
    return float(values.sum(skipna=False))


def energy_by_device(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """Per group and device class: joules per participant of the class over the whole run (computing,
    communicating, waiting, in all), averaged over the group's runs: what a scheme costs a phone, not only the
    fleet on average. Participants are those with a row (asked at least once)."""
    frames = []
    for run in runs:
        rows = run.participants
        if not len(rows) or "energy_j" not in rows:
            continue
        per_class = rows.groupby("device", sort=False).agg(participants=("participant", "nunique"),
                                                           **{part: (part, _sum_or_nan) for part in ENERGY_PARTS})
        for part in ENERGY_PARTS:
            per_class[part] = per_class[part] / per_class["participants"]
        frames.append(per_class.reset_index().assign(group=run.label))
    if not frames:
        return pd.DataFrame(columns=["group", "device", "participants", *ENERGY_PARTS])
    table = pd.concat(frames, ignore_index=True).groupby(["group", "device"], sort=False).mean(numeric_only=True)
    return table.reset_index()[["group", "device", "participants", *ENERGY_PARTS]]


def stragglers(run: RunRecords, factor: float = 2.0) -> pd.DataFrame:
    """Trained participant-rounds whose device time exceeds `factor` times the median of their round's trained
    participants: the ones a synchronous round waits for."""
    trained = run.participants[run.participants["status"] == "ok"] if len(run.participants) else run.participants
    if not len(trained):
        return trained.assign(round_median_s=pd.Series(dtype=float))
    median = trained.groupby("round")["device_time_s"].transform("median")
    slow = trained[trained["device_time_s"] > factor * median]
    return slow.assign(round_median_s=median[slow.index])


def outcomes(runs: Sequence[RunRecords], straggler_factor: float = 2.0) -> pd.DataFrame:
    """Per group, totals over its runs: participant-rounds by outcome, and stragglers among the trained ones."""
    counts: dict[str, dict[str, int]] = {}
    for run in runs:
        totals = counts.setdefault(run.label, {"runs": 0, "participant_rounds": 0, **dict.fromkeys(OUTCOMES, 0),
                                               "stragglers": 0})
        statuses = run.participants["status"].value_counts() if len(run.participants) else {}
        totals["runs"] += 1
        totals["participant_rounds"] += len(run.participants)
        for outcome in OUTCOMES:
            totals[outcome] += int(statuses.get(outcome, 0))
        totals["stragglers"] += len(stragglers(run, straggler_factor))
    return pd.DataFrame([{"group": group, **values} for group, values in counts.items()])


def tokens_per_second(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """Language-model runs, per group and device class: tokens trained over the wall seconds spent training them
    (measured on the emulating hosts, not the devices)."""
    frames = []
    for run in runs:
        rows = run.participants
        if len(rows) and "tokens" in rows:
            trained = rows[(rows["status"] == "ok") & (rows["tokens"] > 0)]
            if len(trained):
                frames.append(trained.assign(group=run.label))
    if not frames:
        return pd.DataFrame(columns=["group", "device", "tokens", "wall_train_s", "tokens_per_s"])
    rows = pd.concat(frames, ignore_index=True)
    table = rows.groupby(["group", "device"], sort=False).agg(tokens=("tokens", "sum"),
                                                             wall_train_s=("wall_train_s", "sum")).reset_index()
    table["tokens_per_s"] = table["tokens"] / table["wall_train_s"]
    return table
