"""The decision in words: one line per objective, the notes on schemes left out, and the recommendation.

Every line states the winner's figure against the runner-up's and says plainly when the two are within each other's
spread over the seeds (the rule: analysis.decision_stats).
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from analysis.decision_stats import Objective, Verdict

SCALES = {"MB": 1e6, "GFLOP": 1e9}


def number(value: float, unit: str) -> str:
    """A figure in its reading unit, without the unit: accuracy to 3 decimals, perplexity to 2, shares in per
    cent, the rest to about three significant digits."""
    if value is None or math.isnan(value):
        return "n/a"
    if unit == "accuracy":
        return f"{value:.3f}"
    if unit == "perplexity":
        return f"{value:.2f}"
    if unit == "share":
        return f"{100 * value:.0f}"
    value = value / SCALES.get(unit, 1.0)
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.2g}"


def figure(value: float, unit: str) -> str:
    """A figure with its unit: '0.778', '120 s', '0.62 MB', '87 % of its cap'."""
    text = number(value, unit)
    if unit in ("accuracy", "perplexity") or text == "n/a":
        return text
    return f"{text} % of its cap" if unit == "share" else f"{text} {unit}"


def bounds(low: float, high: float, unit: str) -> str:
    """An interval of a difference: '-0.025 to 0.089', '-20 to 40 s', '-3 to 9 points of the cap'."""
    text = f"{number(low, unit)} to {number(high, unit)}"
    if unit in ("accuracy", "perplexity"):
        return text
    return f"{text} points of the cap" if unit == "share" else f"{text} {unit}"


def margin(objective: Objective, winner: float, runner: float) -> str:
    """How far ahead the winner is: in the metric's own units for accuracy and perplexity ('0.032 higher'), as a
    share of the runner-up's cost otherwise ('34 % less')."""
    if objective.unit == "accuracy":
        return f"{winner - runner:.3f} higher"
    if objective.unit == "perplexity":
        return f"{runner - winner:.2f} lower"
    if objective.unit == "share":
        return f"{100 * (runner - winner):.0f} points less"
    if not runner:
        return "less"
    share = (runner - winner) / runner
    return "under 1 % less" if share < 0.005 else f"{share:.0%} less".replace("%", " %")


def lower_first(text: str) -> str:
    """'Total device time' -> 'total device time'; 'FLOPs per participant' stays."""
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


def names(items: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def verdict_line(verdict: Verdict) -> str:
    """The objective's line: the winner, its margin and whether it is separable from the runner-up."""
    objective, ranked = verdict.objective, verdict.ranked
    unit, head = objective.unit, f"{objective.title}:"
    if not ranked:
        missing = "reached it on every seed it completed" if objective.key.endswith("to_target") else \
            "has a value on every seed it completed"
        return _with_missing(f"{head} no scheme {missing}.", verdict)
    winner, value = ranked[0], verdict.means[ranked[0]]
    if len(ranked) == 1:
        return _with_missing(f"{head} {winner}, {figure(value, unit)}, the only scheme ranked.", verdict)
    if verdict.tied:
        return _with_missing(f"{head} {names(verdict.tied)} tie, {figure(value, unit)} on every seed.", verdict)
    runner, other = verdict.runner_up, verdict.means[verdict.runner_up]
    _, low, high = verdict.difference
    lead = f"{winner} {objective.verb}, {figure(value, unit)} against {runner}'s {figure(other, unit)} " \
           f"({margin(objective, value, other)})"
    if verdict.paired_seeds < 2:
        seeds = "one seed" if verdict.paired_seeds == 1 else "no common seed"
        return _with_missing(f"{head} {lead}, on {seeds}: not separable without more seeds.", verdict)
    lead_interval = bounds(low, high, unit)  # the winner's lead seed by seed: positive where it is better
    if verdict.separable and math.isclose(low, high, rel_tol=1e-9, abs_tol=1e-12):
        return _with_missing(f"{head} {lead}; separable: the same lead on each of the {verdict.paired_seeds} seeds.", verdict)
    if verdict.separable:
        return _with_missing(f"{head} {lead}; separable over {verdict.paired_seeds} seeds (paired 95 % interval of "
                             f"its lead {lead_interval}).", verdict)
    return _with_missing(f"{head} {winner} leads, {figure(value, unit)} against {runner}'s {figure(other, unit)}, "
                         f"but {winner} and {runner} {objective.tie_verb} within each other's spread (paired 95 % "
                         f"interval of the lead {lead_interval} over {verdict.paired_seeds} seeds): no separable "
                         f"winner.", verdict)


def _with_missing(line: str, verdict: Verdict) -> str:
    reached = verdict.objective.key.endswith("to_target")
    if verdict.never:
        line += f" {'Never reached' if reached else 'No value'}: {names(verdict.never)}."
    if verdict.partial:
        parts = [f"{scheme} ({got} of {seeds} seeds)" for scheme, got, seeds in verdict.partial]
        line += f" {'Reached on some seeds only' if reached else 'A value on some seeds only'}: {names(parts)}."
    if verdict.refused:
        line += f" Not ranked, every task of these devices refused for memory: {names(verdict.refused)}."
    return line


def seed_notes(seeds: pd.DataFrame) -> list[str]:
    """A line per scheme with seeds left out: failed seeds (with the first error), seeds where every device was
    refused for memory."""
    notes = []
    for scheme, frame in seeds.groupby("scheme", sort=False):
        ok = frame.loc[frame["status"] == "ok", "seed"].tolist()
        failed = frame[frame["status"] == "failed"]
        refused = frame.loc[frame["status"] == "refused", "seed"].tolist()
        if len(failed):
            first = failed.iloc[0]
            which = f"seed {_seeds(failed['seed'])} failed" if len(failed) == 1 else \
                f"seeds {_seeds(failed['seed'])} failed"
            rest = f"its figures are over {_seed_word(ok)}" if ok else "it is not ranked"
            if not ok and not refused:
                which = "every seed failed"
            notes.append(f"{scheme}: {which} ({first['error']}); {rest}.")
        if refused:
            where = f"seed {_seeds(refused)}" if len(refused) == 1 else f"seeds {_seeds(refused)}"
            rest = "it trained nothing and is not ranked" if not ok else f"its figures are over {_seed_word(ok)}"
            notes.append(f"{scheme}: every device refused its work for memory on {where}; {rest}.")
    return notes


def _seeds(values: Sequence[int]) -> str:
    return names([str(int(v)) for v in values])


def _seed_word(seeds: Sequence[int]) -> str:
    return f"seed {_seeds(seeds)}" if len(seeds) == 1 else f"seeds {_seeds(seeds)}"


def recommendation(quality: Verdict, contenders: list[str], by: Verdict | None) -> str:
    """The scheme to use: of the schemes that end most accurate within each other's spread (the contenders), the
    one that wins `by` (the time to the target, else the energy or the device time) among them."""
    if not quality.ranked:
        return "Recommendation: none. No scheme trained on this fleet on any seed."
    best = quality.ranked[0]
    if len(contenders) == 1:
        beyond = ("beyond the spread between seeds" if quality.paired_seeds >= 2
                  else "on one seed (no spread to judge by)")
        return (f"Recommendation: {best}. It {quality.objective.verb} "
                f"({figure(quality.means[best], quality.objective.unit)}), ahead of every other scheme {beyond}.")
    among = names(contenders)
    if by is None or not by.ranked:
        return (f"Recommendation: {among} end most accurate within each other's spread; no cost separates them "
                f"here.")
    pick = by.ranked[0]
    what = lower_first(by.objective.title)
    if len(by.ranked) == 1 and by.objective.key.endswith("to_target"):
        return (f"Recommendation: {pick}. Of the schemes that end most accurate within each other's spread "
                f"({among}), it is the only one that reached the target on every seed "
                f"({what}: {figure(by.means[pick], by.objective.unit)}).")
    text = (f"Recommendation: {pick}. Of the schemes that end most accurate within each other's spread ({among}), "
            f"it has the least {what} ({figure(by.means[pick], by.objective.unit)})")
    if len(by.ranked) > 1 and not by.separable:
        return text + f", though {by.ranked[1]} is within its spread there too."
    return text + "."
