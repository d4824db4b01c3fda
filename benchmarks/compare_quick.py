"""The issue-27 target: `compare configs/quickstart.yaml --quick` from the command line, in a fresh directory, timed
whole (start-up, checks, the runs, decision.md and the report), with the load average around it and the decision
it named. The target: 10 minutes or less on the project's 2-core machine, with a winner named per objective.

    .venv/bin/python benchmarks/compare_quick.py [--repeats 1] [-- extra compare options]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load, median, report  # noqa: E402

COMMAND = [sys.executable, "-m", "msfusion_ray", "compare", "quickstart", "--quick"]


def one(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        before, started = load(), time.perf_counter()
        done = subprocess.run([*COMMAND, "--output-dir", scratch, *extra], capture_output=True, text=True,
                              cwd=scratch)
        wall = time.perf_counter() - started
        directory = next(Path(scratch).glob("*-compare-quick"), None)
        frame = []
        if directory is not None and (directory / "decision.md").is_file():
            from analysis.decision import load_decision

            frame = load_decision(directory).frame().to_dict("records")
    named = [row for row in frame if row["winner"]]
    return {"wall_s": round(wall, 1), "exit_code": done.returncode, "load_before": before, "load_after": load(),
            "objectives": len(frame), "winner_named": len(named), "separable": sum(bool(r["separable"]) for r in named),
            "recommendation": next((line for line in done.stdout.splitlines() if line.startswith("Recommendation")),
                                   done.stderr.strip().splitlines()[-1:] or ""),
            "lines": [row["line"] for row in frame]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more compare options (after --)")
    args = parser.parse_args()
    runs = [one(args.extra) for _ in range(args.repeats)]
    summary = {"repeats": len(runs), "median_wall_s": median([r["wall_s"] for r in runs]),
               "max_wall_s": max(r["wall_s"] for r in runs), "objectives": runs[0]["objectives"],
               "winner_named": runs[0]["winner_named"], "load_before": runs[0]["load_before"],
               "load_after": runs[-1]["load_after"]}
    print(json.dumps(runs[-1]["lines"], indent=1))
    report("compare-quick", {"runs": runs, "summary": summary}, [summary], command=" ".join([*COMMAND, *args.extra]))


if __name__ == "__main__":
    main()
