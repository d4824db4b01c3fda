"""The `split` command's text: the chosen cut, each node's memory and stage times, and the predicted epoch time of
the integer program's split against the manual ones."""

from __future__ import annotations

from msfusion_ray.pipeline.plan import PipelinePlan, PipelinePlanner
from msfusion_ray.pipeline.time_model import Regime, regime

GIB = 2**30
MIB = 2**20
RULES = ("optimal", "equal", "balanced")


def _layers(plan: PipelinePlan, start: int, end: int) -> str:
    names = plan.layer_names
    return f"{start}-{end - 1} ({names[start]}..{names[end - 1]})" if end - start > 1 else f"{start} ({names[start]})"


def split_report(planner: PipelinePlanner) -> str:
    """Every rule's split (and the config's explicit cuts, where given), the one the config chooses marked."""
    splits = {rule: planner.split(rule) for rule in RULES}
    params = planner.params
    chosen = params.split if params.cuts is None else "cuts"
    if params.cuts is not None:
        splits["cuts"] = planner.configured_split()
    plans = {rule: planner.plan(split) for rule, split in splits.items() if split is not None}
    any_plan = next(iter(plans.values()))
    fleet = planner.fleet
    owners = ", ".join(sorted({p.device.name for p in fleet.participants}))
    lines = [
        f"{len(planner.layer_names)} layers, batch {planner.training.batch_size}; {len(fleet)} data owners ({owners}), "
        f"{len(planner.candidates)} compute nodes; owners hold layers {_layers(any_plan, *any_plan.front)} and "
        f"{_layers(any_plan, *any_plan.back)}",
        f"owner memory: {planner.owner_memory() / MIB:.1f} MiB each; "
        f"{sum(o.fits for o in any_plan.owners)} of {len(fleet)} owners fit",
        f"chosen split (strategy.params): {chosen}" + ("" if chosen in plans else " (nothing fits)"),
        "",
        f"{'split':<9} {'stage':>5}  {'node':<22} {'layers':<28} {'memory GiB':>10} {'cap GiB':>8} "
        f"{'fwd s':>8} {'bwd s':>8}  fits",
    ]
    if "optimal" not in plans:
        lines.append("optimal   no split of these layers fits the compute nodes' memory")
    for rule, plan in plans.items():
        for stage, (node, (a, b)) in enumerate(zip(plan.nodes, plan.split.ranges), start=1):
            memory, cap = plan.split.memory_bytes[stage - 1], plan.split.caps[stage - 1]
            lines.append(f"{rule if stage == 1 else '':<9} {stage:>5}  {f'{node.id} {node.device.name}':<22} "
                         f"{_layers(plan, a, b):<28} {memory / GIB:>10.4g} {cap / GIB:>8.4g} "
                         f"{plan.split.forward_s[stage - 1]:>8.3g} {plan.split.backward_s[stage - 1]:>8.3g}  "
                         f"{'yes' if memory <= cap else 'NO (oom)'}")
    lines += ["", f"epoch of {any_plan.times.batches} batches   {'pipe-full s':>11} {'closed form s':>13} "
                  f"{'schedule s':>10} {'aggregation s':>13}"]
    for rule, plan in plans.items():
        lines.append(f"{rule + (' (chosen)' if rule == chosen else ''):<24} {plan.split.pipe_full_s:>11.4g} "
                     f"{plan.estimate.epoch_s:>13.5g} {plan.schedule.epoch_s:>10.5g} "
                     f"{plan.schedule.aggregation_s:>13.4g}")
    if "optimal" in plans:
        best = plans["optimal"]
        for rule in ("equal", "balanced"):
            other = plans[rule]
            lines.append(f"optimal vs {rule}: epoch {_change(best.schedule.epoch_s, other.schedule.epoch_s)} "
                         f"(schedule), {_change(best.estimate.epoch_s, other.estimate.epoch_s)} (closed form)"
                         + ("" if other.split.fits else f"; the {rule} split does not fit"))
    lines.append("")
    for rule, plan in plans.items():
        lines.extend(regime_lines(rule, regime(plan.times, plan.schedule.epoch_s)))
    return "\n".join(lines)


def regime_lines(rule: str, found: Regime) -> list[str]:
    """Whether the schedule of a split follows the closed form, and what keeps its pipeline part-empty if not."""
    head = f"regime, {rule}: schedule {found.gap * 100:+.1f} % against the closed form"
    if found.holds:
        return [f"{head}: in its regime (within {found.tolerance * 100:g} %)"]
    return [f"{head}: outside its regime"] + [f"  - {reason}" for reason in found.reasons]


def _change(new: float, old: float) -> str:
    return f"{(new - old) / old * 100:+.1f} %"
