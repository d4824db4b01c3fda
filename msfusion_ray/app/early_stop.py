"""Hopeless tuning runs stop early, by a rule that is stated (RULE, recorded in compare.json) and the same whichever
run finished first: it reads recorded validation values only. It compares a scheme's runs with each other only, so
every scheme's budget is spent alike; the runs that go on continue from their checkpoint at the rung.
"""

from __future__ import annotations

import statistics
from typing import Mapping

RUNG_FRACTION = 0.5
MIN_RUNS = 3
RULE = ("Hopeless tuning runs stop early: every tuning run first runs half its steps (rounded down to a step it "
        "evaluates at); there, within each scheme with at least 3 tuning runs, a run whose validation metric is worse "
        "than the median of its scheme's runs stops, the others continue to the end, and a stopped run ranks after "
        "every run of its scheme that went on (a scheme with fewer tuning runs has no rung). Off with "
        "--no-early-stop.")


def rung_steps(rounds: int, eval_every: int) -> int | None:
    """The step a run is judged at: the last evaluated step at or before RUNG_FRACTION of its steps (None: no such
    step before the end)."""
    rung = int(rounds * RUNG_FRACTION) // eval_every * eval_every
    return rung if 0 < rung < rounds else None


def judged_schemes(schemes: list[str]) -> set[str]:
    """The schemes whose runs can stop at the rung (`schemes`: one entry per run that has a rung): those with
    MIN_RUNS or more; the others' runs go straight to the end (a rung would only split them in two)."""
    return {s for s in set(schemes) if schemes.count(s) >= MIN_RUNS}


def hopeless(scores: Mapping[str, float | None], scheme_of: Mapping[str, str], lower_is_better: bool) -> list[str]:
    """The runs (keys of `scores`) that stop at the rung: worse than their scheme's median (runs without a value,
    which failed, are not continued either way and count in no median)."""
    stop = []
    for scheme in dict.fromkeys(scheme_of.values()):
        valued = {run: scores[run] for run, owner in scheme_of.items()
                  if owner == scheme and scores.get(run) is not None}
        if len(valued) < MIN_RUNS:
            continue
        median = statistics.median(valued.values())
        stop += [run for run, value in valued.items() if (value > median if lower_is_better else value < median)]
    return stop
