"""Command line: run, sweep, tune, validate, split, profiles, calibrate, plot, report, schema.

Bad input of any kind ends with one line on stderr naming the field or file, and exit code 2, before anything is
started or written.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from msfusion_ray import calibrate
from msfusion_ray.config import ExperimentConfig, RuntimeConfig, load_config, runtime_ahead
from msfusion_ray.errors import ClusterStartError, UserInputError
from msfusion_ray.failures import RUN_LOG
from msfusion_ray.inputs import load_yaml
from msfusion_ray.launch import RunFailed, execute, interruption, open_run, open_run_dir
from msfusion_ray.paths import find, find_config

if TYPE_CHECKING:
    from msfusion_ray.experiment import Prepared
    from msfusion_ray.launchable import Launchable

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

    report = commands.add_parser("report", help="an HTML report (plots, tables, config) of a run or a sweep")
    report.add_argument("path", metavar="RUN_OR_SWEEP_DIR")
    report.add_argument("--out", help="output directory (default: RUN_OR_SWEEP_DIR/report)")
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
    except ClusterStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        stop = interruption(err)
        print(stop.reason, file=sys.stderr)
        return stop.exit_code


def _validate(args: argparse.Namespace) -> int:
    from msfusion_ray.experiment import check_module, prepare
    from msfusion_ray.models import ModuleFamily
    from msfusion_ray.models.module import check_sub_model

    prepared = prepare(load_config(find_config(args.config), _overrides(args)))
    config = prepared.config
    print(f"config ok: {config.name}, strategy {prepared.strategy.name}, model {config.model.name} "
          f"(width {config.model.width}), {len(prepared.fleet)} participants, {len(prepared.data.train)} training "
          f"samples")
    if isinstance(prepared.family, ModuleFamily):
        check_module(prepared.family, prepared.strategy, prepared.strategy.objective() is not None)
        if prepared.family.spec.groups:
            widths = check_sub_model(prepared.family)
            print(f"sub-models ok: {len(widths)} width groups; a random selection ({sum(widths.values())} of "
                  f"{sum(prepared.family.spec.groups.values())} units) is cut, loaded and run forward")
    print(f"{'participant':>11}  {'device':<22} {'samples':>7}  {'cap MiB':>9}  {'max rate':>8}")
    for p in prepared.fleet.participants:
        rate = prepared.strategy.largest_trainable_rate(p.id, prepared.capacity)
        print(f"{p.id:>11}  {p.device.name:<22} {len(prepared.partitions[p.id]):>7}  "
              f"{p.memory_cap_bytes / 2**20:>9.1f}  {'none' if rate is None else f'{rate:.3f}':>8}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from msfusion_ray.pipeline.report import split_report
    from msfusion_ray.pipeline.setup import planner_for

    config = load_config(find_config(args.config), _overrides(args))
    print(f"{config.name}: {config.model.name} (width {config.model.width}) on {config.data.dataset}")
    print(split_report(planner_for(config)))
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from msfusion_ray.devices.profile import default_profiles_dir, load_profiles

    directory = find(args.dir) if args.dir else default_profiles_dir()
    print(f"{'profile':<22} {'memory MiB':>10} {'GFLOP/s':>8} {'up Mb/s':>8} {'down Mb/s':>9} {'RTT ms':>7} "
          f"{'avail':>5}")
    for profile in load_profiles(directory).values():
        print(f"{profile.name:<22} {profile.memory_mib:>10.0f} {profile.train_gflops:>8.1f} "
              f"{profile.uplink_mbps:>8.1f} {profile.downlink_mbps:>9.1f} {profile.latency_ms:>7.0f} "
              f"{profile.availability:>5.2f}")
    fleets = sorted((directory / "fleets").glob("*.yaml"))
    if fleets:
        print("\nfleets: " + ", ".join(f.stem for f in fleets))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from analysis.plots import plot_runs

    for run_dir in args.run_dirs:
        _check_run_dir(run_dir)
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "plots"
    for path in plot_runs(args.run_dirs, out):
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.resume and not args.config:
        raise UserInputError("run", "give a CONFIG or --resume RUN_DIR")
    config_path = find_config(args.config) if not args.resume else None
    if args.exiting:
        prepared, resumed = prepare_beside_cluster(config_path, args.resume, _overrides(args), args.address)
        run_dir, run_id = open_run_dir(prepared, resumed, _overrides(args) if args.resume else ())
    else:
        prepared, run_dir, run_id = open_run(read_config(config_path, _overrides(args)), args.resume,
                                             _overrides(args) if args.resume else (), args.address)
    resume_hint = f"continue with: python -m msfusion_ray run --resume {run_dir}"
    try:
        summary = execute(prepared, run_dir, run_id, resume=bool(args.resume), exiting=args.exiting)
    except RunFailed as err:
        print(f"error: run failed: {err} (full text: {run_dir / RUN_LOG})", file=sys.stderr)
        print(resume_hint, file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        stop = interruption(err)
        print(f"run {stop.reason}; records so far: {run_dir} ({resume_hint})", file=sys.stderr)
        return stop.exit_code
    print(f"run {run_id}: {summary['rounds_completed']} rounds, final accuracy {summary['final_accuracy']}, "
          f"best {summary['best_accuracy']}, {summary['wall_s']:.1f} s")
    print(f"records: {run_dir}")
    if not args.no_plots:
        from analysis.plots import plot_runs

        for path in plot_runs([run_dir], run_dir / "plots"):
            print(f"plot: {path}")
    return 0


def read_config(path: Path | None, overrides: list[str]) -> ExperimentConfig | None:
    """A new run's config from its file with `overrides` (None for a resumed run: its directory has it)."""
    return load_config(path, overrides) if path is not None else None


def read_and_prepare(path: Path | None, resume: str | None, overrides: list[str], address: str | None,
                     note: Callable[[Any], None]) -> Prepared:
    """What `prepare_beside_cluster` has its child process do: the config read and checked (`note`d as soon as it
    is, with the resumed run's directory), then the experiment prepared."""
    from msfusion_ray.launch import prepare_checked, run_config

    config, resumed = run_config(read_config(path, overrides), resume, overrides if resume else (), address)
    note((config, resumed))
    return prepare_checked(config, resumed)


def cluster_ahead(path: Path | None, resume: str | None, overrides: list[str]) -> tuple[RuntimeConfig, list] | None:
    """What starting the run's cluster needs (`runtime_ahead`: its runtime section and the code it names), read from
    the config file, or from the resumed run's; None where it cannot be read (the whole check says why)."""
    source = path if path is not None else Path(resume) / "config.yaml"
    try:
        data = load_yaml(source)
    except UserInputError:
        return None
    return runtime_ahead(data, overrides, config_dir=source.parent if path is not None else None)


def prepare_beside_cluster(path: Path | None, resume: str | None, overrides: list[str],
                           address: str | None) -> tuple[Launchable, Path | None]:
    """Read the config and prepare the experiment (every check happens before anything is written) while its
    embedded cluster starts: each takes seconds, and the cluster needs only the config's runtime section (read
    ahead of the rest: `cluster_ahead`; started again in the odd case the whole check resolves it otherwise).
    Reading the whole config (the strategies' parameters are checked by their classes) and preparing import torch:
    they happen in a process of their own (`PreparingApart`), so that this one, which lives as long as the run,
    never does. A process that exits right after (see `exit_now`) takes a cluster started for input that turned
    out bad down with it; where the kernel would not (no fate sharing) or the run joins a cluster, it prepares
    first."""
    import ray

    from msfusion_ray.code_refs import job_runtime_env
    from msfusion_ray.launch import code_named
    from msfusion_ray.launchable import PreparingApart
    from msfusion_ray.runtime.cluster import ends_with_this_process, fate_sharing_supported, start_cluster

    started: tuple[RuntimeConfig, list] | None = None  # what the running cluster was started for
    failed: ClusterStartError | None = None

    def start(runtime: RuntimeConfig, code: list) -> None:
        nonlocal started, failed
        if failed is None and not runtime.address and fate_sharing_supported():
            try:
                start_cluster(runtime, job_runtime_env(code))
                started = (runtime, code)
            except ClusterStartError as err:
                failed = err

    ahead = cluster_ahead(path, resume, overrides) if not address else None
    with PreparingApart(functools.partial(read_and_prepare, path, resume, overrides, address)) as preparing:
        if ahead is not None:
            start(*ahead)
        config, resumed = preparing.note()
        needed = (config.runtime, code_named(config))
        if started is not None and started != needed:
            ray.shutdown()
            started = None
        if started is None:
            start(*needed)
        prepared = preparing.result()  # bad input first: exit code 2 whatever the cluster did
    if failed is not None:
        raise failed
    if ray.is_initialized() and not ends_with_this_process():  # not what the check promised: leave nothing
        ray.shutdown()
    return prepared, resumed


def _check_run_dir(path: str | Path) -> None:
    if not (Path(path) / "config.yaml").is_file():
        raise UserInputError(str(path), "not a run directory (no config.yaml)")


def _sweep(args: argparse.Namespace) -> int:
    from msfusion_ray import sweep as sweeps

    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserInputError("--max-parallel", f"must be >= 1 (got {args.max_parallel})")
    if args.resume:
        if _overrides(args):
            raise UserInputError("--set", "a resumed sweep keeps its recorded config; start a new sweep to change it")
        plan = sweeps.load_sweep_dir(args.resume)
    elif args.config:
        plan = sweeps.load_sweep(find_config(args.config), _overrides(args))
        sweeps.check_directory(plan)
    else:
        raise UserInputError("sweep", "give a CONFIG or --resume SWEEP_DIR")
    status = sweeps.execute_sweep(plan, args.retry_failed, args.max_parallel, args.address)
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
    from msfusion_ray import tuning

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
    from analysis.report import write_report
    from analysis.runs import is_sweep_dir

    path = Path(args.path)
    if not is_sweep_dir(path):
        _check_run_dir(path)
    print(write_report(path, Path(args.out) if args.out else path / "report"))
    return 0


def exit_now(code: int) -> None:
    """End the command-line process at once, its output flushed: what it wrote is on disk, and the interpreter's
    own teardown (and an embedded cluster's, see `ray_cluster`) would only make the user wait."""
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

    from msfusion_ray.config import json_schema

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


COMMANDS = {"run": _run, "sweep": _sweep, "tune": _tune, "validate": _validate, "split": _split,
            "profiles": _profiles, "plot": _plot, "report": _report, "schema": _schema,
            "calibrate": calibrate.command}
