"""`python -m msfusion_ray compare`: its arguments, and the command (plan, run, decide, print); the command line
registers it."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def add_compare_parser(commands: Any, add_config_options: Callable[[argparse.ArgumentParser], None]) -> None:
    compare = commands.add_parser("compare", help="which scheme for this fleet: every scheme that applies, tuned "
                                                 "alike, on several seeds, and the decision (resumable)")
    compare.add_argument("config", help="experiment YAML (model, data, fleet, training budget), or a ready one by "
                                        "name")
    compare.add_argument("--schemes", help="comma-separated strategy names (default: every scheme that applies)")
    compare.add_argument("--seeds", type=int, help="final runs per scheme, on seeds 1..N (default 3)")
    compare.add_argument("--budget", type=int, help="tuning runs per scheme (default 3; 1: no tuning)")
    compare.add_argument("--target", type=float, help="the test accuracy (perplexity for a language model) to reach")
    compare.add_argument("--quick", action="store_true", help="sized for a laptop: smaller runs, no tuning runs")
    compare.add_argument("--no-early-stop", action="store_true", help="run every tuning run to the end")
    compare.add_argument("--max-parallel", type=int, metavar="N", help="runs side by side (default: from the cluster)")
    compare.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    compare.add_argument("--output-dir", default="sweeps", help="where the comparison's directory goes (sweeps)")
    compare.add_argument("--no-report", action="store_true", help="skip the HTML report (decision.md is written)")
    add_config_options(compare)
    compare.add_argument("--address", help="an existing Ray cluster (default: start an embedded local one)")


def run_compare_command(args: argparse.Namespace, overrides: list[str]) -> int:
    """Plan (every check first), run what is left, write decision.md and the report, print the decision. Exit
    code 1 where a final run did not complete (the decision leaves it out and says so)."""
    from analysis.decision import load_decision, write_decision
    from analysis.report import write_report
    from msfusion_ray.comparing.plan import CompareOptions, plan_compare
    from msfusion_ray.comparing.protocol import execute_comparison
    from msfusion_ray.config import load_config
    from msfusion_ray.paths import find_config

    options = CompareOptions(schemes=args.schemes.split(",") if args.schemes is not None else None,
                             seeds=args.seeds, budget=args.budget, target=args.target, quick=args.quick,
                             early_stop=not args.no_early_stop, max_parallel=args.max_parallel,
                             output_dir=args.output_dir)
    path = find_config(args.config)
    plan = plan_compare(load_config(path, overrides), options, str(path))
    for name, reason in plan.excluded.items():
        print(f"{name}: {reason}")
    record = execute_comparison(plan, args.retry_failed, args.address)
    decision = load_decision(plan.directory)
    print(decision.recommendation)
    for line in decision.lines:
        print(f"- {line}")
    print(f"decision: {write_decision(plan.directory, decision=decision)}")
    if not args.no_report:
        print(f"report: {write_report(plan.directory, plan.directory / 'report')}")
    failed = [c for s in record["schemes"].values() for c in s["final_cells"] if c.get("status") != "complete"]
    if failed:
        print(f"{len(failed)} final runs did not complete (first: {failed[0]['cell']}); run the same command with "
              f"--retry-failed", file=sys.stderr)
    return 1 if failed else 0
