"""Command line: run, sweep, tune, compare, validate, split, profiles, calibrate, plot, report, schema.

Argument parsing and printing: every command calls the lifecycle (msfusion_ray.app) and prints what it returns.
Bad input of any kind ends with one line on stderr naming the field or file, and exit code 2, before anything is
started or written. This module imports neither torch nor Ray: a run's experiment is prepared in a process of its
own where the process ends after the command (msfusion_ray.app.apart), and the other commands import what they
need when they run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from msfusion_ray.app import calibrate
from msfusion_ray.app.request import RunRequest
from msfusion_ray.app.run_dir import check_run_dir
from msfusion_ray.app.stops import RunFailed, interruption
from msfusion_ray.errors import ClusterStartError, UserInputError, WriteFailed
from msfusion_ray.paths import find, find_config
from msfusion_ray.runtime.run_log import RUN_LOG

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m msfusion_ray",
                                     description="Compare collaborative training schemes on emulated device fleets.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one experiment on a Ray cluster")
    run.add_argument("config", nargs="?", help="experiment YAML, or a ready one by name (quickstart, "
                                               "fmnist/resnet18_hetero8); omit with --resume")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    _add_config_options(run)
    run.add_argument("--address", help="an existing Ray cluster (default: start an embedded local one)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots at the end")

    sweep = commands.add_parser("sweep", help="run a grid of experiments on one Ray cluster (resumable)")
    sweep.add_argument("config", nargs="?", help="sweep YAML: a base config and a grid, or a ready one by name "
                                                 "(sweeps/fmnist_compare); omit with --resume")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep (running the same command also does)")
    sweep.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    sweep.add_argument("--max-parallel", type=int, metavar="N", help="cells side by side (default: from the cluster)")
    _add_config_options(sweep)
    sweep.add_argument("--address", help="an existing Ray cluster (default: start an embedded local one)")
    sweep.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")

    tune = commands.add_parser("tune", help="the fair tuning protocol: the same budget per scheme on the validation "
                                             "split, then each winner on fresh seeds (resumable)")
    tune.add_argument("config", help="tuning YAML: a base config, the schemes and their spaces, the budget (or a "
                                      "ready one by name: tuning/fmnist_width)")
    tune.add_argument("--max-parallel", type=int, metavar="N", help="cells side by side (default: from the cluster)")
    tune.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    _add_config_options(tune)
    tune.add_argument("--address", help="an existing Ray cluster (default: start an embedded local one)")

    compare = commands.add_parser("compare", help="which scheme for this fleet: every scheme that applies, tuned "
                                                 "alike, on several seeds, and the decision (resumable)")
    compare.add_argument("config", help="experiment YAML (model, data, fleet, training budget), or a ready one")
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
    _add_config_options(compare)
    compare.add_argument("--address", help="an existing Ray cluster (default: start an embedded local one)")

    validate = commands.add_parser("validate", help="check a config, its fleet and data without running")
    validate.add_argument("config")
    _add_config_options(validate)

    split = commands.add_parser("split", help="plan pipeline split learning: the cut, memory, stage and epoch times")
    split.add_argument("config")
    _add_config_options(split)

    profiles = commands.add_parser("profiles", help="list the device profiles and fleets")
    profiles.add_argument("--dir", help="profile directory (default: the bundled device_profiles/)")

    calibrate.add_arguments(commands.add_parser("calibrate", help="measure this node and write its device profile"))

    plot = commands.add_parser("plot", help="plot one or more finished runs")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("--out", help="output directory (default: RUN_DIR/plots for one run)")

    schema = commands.add_parser("schema", help="print the JSON Schema of config files (for an editor's YAML support)")
    schema.add_argument("--kind", choices=("any", "experiment", "sweep", "tuning"), default="any",
                        help="an experiment config, a sweep file, a tuning file, or any of them (default)")

    report = commands.add_parser("report", help="an HTML report (plots, tables, config) of a run, a sweep or a "
                                                "comparison")
    report.add_argument("path", metavar="DIR", help="a run, sweep or comparison directory")
    report.add_argument("--out", help="output directory (default: DIR/report)")
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=0.01 (repeatable)")
    parser.add_argument("--data-dir", help="where the data set's files are (same as --set data.data_dir=DIR)")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    return list(args.set) + extra


def main(argv: Sequence[str] | None = None, exiting: bool = False) -> int:
    """The command's exit code. `exiting`: the process ends right after (python -m msfusion_ray), so a run's
    embedded cluster is left to end with it."""
    args = _parser().parse_args(argv)
    args.exiting = exiting
    try:
        return COMMANDS[args.command](args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ClusterStartError, WriteFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        stop = interruption(err)
        print(stop.reason, file=sys.stderr)
        return stop.exit_code


def _validate(args: argparse.Namespace) -> int:
    from msfusion_ray.app.preparation import validate
    from msfusion_ray.devices.spread import spread_lines

    checked = validate(RunRequest.from_file(args.config, _overrides(args)))
    experiment, config = checked.experiment, checked.experiment.config
    print(f"config ok: {config.name}, strategy {experiment.strategy.name}, model {config.model.name} "
          f"(width {config.model.width}), {len(experiment.fleet)} participants, {len(experiment.data.train)} "
          f"training samples")
    if checked.sub_model_widths is not None:
        widths = checked.sub_model_widths
        print(f"sub-models ok: {len(widths)} width groups; a random selection ({sum(widths.values())} of "
              f"{sum(experiment.family.spec.groups.values())} units) is cut, loaded and run forward")
    print("\n".join(spread_lines(experiment.fleet)) + "\n")
    shown = experiment.fleet.participants[:VALIDATE_LISTED]
    print(f"{'participant':>11}  {'device':<22} {'samples':>7}  {'cap MiB':>9}  {'max rate':>8}")
    for p in shown:
        rate = experiment.strategy.largest_trainable_rate(p.id, experiment.capacity)
        print(f"{p.id:>11}  {experiment.fleet.label(p.id)[:22]:<22} {experiment.partitions.size_of(p.id):>7}  "
              f"{p.memory_cap_bytes / 2**20:>9.1f}  {'none' if rate is None else f'{rate:.3f}':>8}")
    if len(shown) < len(experiment.fleet):
        print(f"({len(experiment.fleet) - len(shown)} more participants; records/fleet.parquet of a run lists all)")
    return 0


VALIDATE_LISTED = 200  # participants listed one by one; the spread table covers every one


def _split(args: argparse.Namespace) -> int:
    from msfusion_ray.app.preparation import check_whole
    from msfusion_ray.experiment.pipeline_planning import planner_for
    from msfusion_ray.pipeline.report import split_report

    config = check_whole(RunRequest.from_file(args.config, _overrides(args))).config
    print(f"{config.name}: {config.model.name} (width {config.model.width}) on {config.data.dataset}")
    print(split_report(planner_for(config)))
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from msfusion_ray.devices.profile import default_profiles_dir, load_profiles
    from msfusion_ray.devices.spread import profile_lines

    directory = find(args.dir) if args.dir else default_profiles_dir()
    print("\n".join(profile_lines(load_profiles(directory))))
    fleets = sorted((directory / "fleets").glob("*.yaml"))
    if fleets:
        print("\nfleets: " + ", ".join(f.stem for f in fleets))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from analysis.plots import plot_runs

    for run_dir in args.run_dirs:
        check_run_dir(run_dir)
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "plots"
    for path in plot_runs(args.run_dirs, out):
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    from msfusion_ray.app import lifecycle

    if args.resume:
        request = RunRequest.resuming(args.resume, _overrides(args), args.address)
    elif args.config:
        request = RunRequest.from_file(args.config, _overrides(args), args.address)
    else:
        raise UserInputError("run", "give a CONFIG or --resume RUN_DIR")
    try:
        finished = lifecycle.run(request, apart=args.exiting, exiting=args.exiting)
    except RunFailed as err:
        print(f"error: run failed: {err} (full text: {err.run_dir / RUN_LOG})", file=sys.stderr)
        print(_resume_hint(err.run_dir), file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        stop = interruption(err)
        if stop is None or stop.run_dir is None:
            raise
        print(f"run {stop.reason}; records so far: {stop.run_dir} ({_resume_hint(stop.run_dir)})", file=sys.stderr)
        return stop.exit_code
    summary = finished.summary
    print(f"run {finished.run_id}: {summary['rounds_completed']} rounds, final accuracy {summary['final_accuracy']}, "
          f"best {summary['best_accuracy']}, {summary['wall_s']:.1f} s")
    print(f"records: {finished.run_dir}")
    if not args.no_plots:
        from analysis.plots import plot_runs

        for path in plot_runs([finished.run_dir], finished.run_dir / "plots"):
            print(f"plot: {path}")
    return 0


def _resume_hint(run_dir: Path) -> str:
    return f"continue with: python -m msfusion_ray run --resume {run_dir}"


def _sweep(args: argparse.Namespace) -> int:
    from msfusion_ray.app import sweep_plan
    from msfusion_ray.app.sweep import execute_sweep

    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserInputError("--max-parallel", f"must be >= 1 (got {args.max_parallel})")
    if args.resume:
        if _overrides(args):
            raise UserInputError("--set", "a resumed sweep keeps its recorded config; start a new sweep to change it")
        plan = sweep_plan.load_sweep_dir(args.resume)
    elif args.config:
        plan = sweep_plan.load_sweep(find_config(args.config), _overrides(args))
        sweep_plan.check_directory(plan)
    else:
        raise UserInputError("sweep", "give a CONFIG or --resume SWEEP_DIR")
    status = execute_sweep(plan, args.retry_failed, args.max_parallel, args.address)
    print(f"{'cell':<48} {'status':<9} {'rounds':>6} {'final':>10} {'wall s':>7}  error")
    for cell_id, cell in status.cells.items():
        accuracy, perplexity, wall = cell.get("final_accuracy"), cell.get("final_perplexity"), cell.get("wall_s")
        final = f"acc {accuracy:.4f}" if accuracy is not None else f"ppl {perplexity:.2f}" if perplexity else ""
        print(f"{cell_id:<48} {cell['status']:<9} {cell.get('rounds_completed') or 0:>6} {final:>10} "
              f"{'' if wall is None else f'{wall:.1f}':>7}  {cell.get('error') or ''}")
    print(f"sweep: {plan.directory}")
    if not args.no_report:
        from analysis.report import write_report

        print(f"report: {write_report(plan.directory, plan.directory / 'report')}")
    return 1 if status.counts()["failed"] else 0


def _tune(args: argparse.Namespace) -> int:
    from analysis.tuning import tuning_report
    from msfusion_ray.app import tuning

    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserInputError("--max-parallel", f"must be >= 1 (got {args.max_parallel})")
    plan = tuning.read_tuning(find_config(args.config), _overrides(args))
    try:
        tuning.run_protocol(plan, tuning.sweep_stage_runner(args.max_parallel, args.address,
                                                            retry_failed=args.retry_failed))
    except tuning.StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(tuning_report(plan.directory))
    print(f"tuning: {plan.directory}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.decision import is_compare_dir
    from analysis.report import write_report
    from analysis.runs import is_sweep_dir

    path = Path(args.path)
    if not is_sweep_dir(path) and not is_compare_dir(path):
        check_run_dir(path)
    print(write_report(path, Path(args.out) if args.out else path / "report"))
    return 0


def exit_now(code: int) -> None:
    """End the command-line process at once, its output flushed: what it wrote is on disk, and the interpreter's
    own teardown (and an embedded cluster's: msfusion_ray.app.ray_session.ClusterSession) would only make the
    user wait."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    end_descendants()
    os._exit(code)


def end_descendants() -> None:
    """Kill every process this one started, and those they started (an embedded cluster: its own processes, and
    the agents and workers its raylet started). The kernel ends the cluster's own processes with this one, but
    not always theirs: a dashboard agent whose raylet died that way lived on for a minute or two."""
    import psutil

    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for process in descendants:
        try:
            process.kill()
        except psutil.Error:
            pass


def _schema(args: argparse.Namespace) -> int:
    import json

    from msfusion_ray.app.schema import json_schema

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Plan (every check first), run what is left, print the decision; exit 1 where a final run did not complete
    (the decision leaves it out and says so)."""
    from msfusion_ray.app.compare import run_comparison
    from msfusion_ray.app.compare_plan import CompareOptions, plan_compare
    from msfusion_ray.experiment.config_check import load_config

    options = CompareOptions(schemes=args.schemes.split(",") if args.schemes is not None else None,
                             seeds=args.seeds, budget=args.budget, target=args.target, quick=args.quick,
                             early_stop=not args.no_early_stop, max_parallel=args.max_parallel,
                             output_dir=args.output_dir)
    path = find_config(args.config)
    plan = plan_compare(load_config(path, _overrides(args)), options, str(path))
    for name, reason in plan.excluded.items():
        print(f"{name}: {reason}")
    done = run_comparison(plan, args.retry_failed, args.address, report=not args.no_report)
    print(done.decision.recommendation)
    for line in done.decision.lines:
        print(f"- {line}")
    print(f"decision: {done.directory / 'decision.md'}")
    if done.report is not None:
        print(f"report: {done.report}")
    if done.failed:
        print(f"{len(done.failed)} final runs did not complete (first: {done.failed[0]['cell']}); run the same "
              f"command with --retry-failed", file=sys.stderr)
    return 1 if done.failed else 0


COMMANDS = {"run": _run, "sweep": _sweep, "tune": _tune, "compare": _compare, "validate": _validate,
            "split": _split, "profiles": _profiles, "plot": _plot, "report": _report, "schema": _schema,
            "calibrate": calibrate.command}
