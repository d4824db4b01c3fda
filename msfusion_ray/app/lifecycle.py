"""One run's lifecycle: load -> check -> prepare -> launch -> watch -> finish, the one path of every run.

The command line, the Python API (`msfusion_ray.run`), sweeps, tuning and `compare` all go through it:

- load (msfusion_ray.app.request.RunRequest): the config file or mapping with its overrides, or a run directory
  to resume;
- check: the whole config, pure and fast, before any cluster starts; bad input is one `UserInputError` line and
  nothing on disk;
- prepare (msfusion_ray.app.preparation): data, fleet, model, footprint planning; in this process, or `apart` in
  a child process (msfusion_ray.app.apart) so that this one never imports torch, the cluster starting beside it;
- launch and watch (msfusion_ray.app.launching, run_handle): the run directory is made only now
  (msfusion_ray.app.run_dir, the one writer of summary.json), then the driver and host actors start and the run is
  watched, its driver started again if its process dies;
- finish: the summary, or the failure in one line (`RunFailed`, `RunInterrupted`) with the full text in run.log.

A sweep (msfusion_ray.app.sweep) takes the same steps for each of its cells, on one cluster.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from msfusion_ray.app.apart import PreparationProcess
from msfusion_ray.app.request import CheckedRun, RunRequest, check_request
from msfusion_ray.errors import ClusterStartError
from msfusion_ray.runtime.ray_private import fate_sharing_supported

if TYPE_CHECKING:  # imported where used: Ray once the child prepares, torch only where preparing is not apart
    from msfusion_ray.app.launching import FinishedRun, Launcher
    from msfusion_ray.experiment.shipment import Shipment


def run(request: RunRequest, *, apart: bool = False, exiting: bool = False,
        show_progress: bool = True) -> FinishedRun:
    """A run, from its request to its summary. `apart`: prepare in a child process, this one never importing
    torch (it starts first, then this process imports Ray). `exiting`: the process ends right after (the command
    line), so an embedded cluster whose processes die with it is left to end with it, and may start while the
    experiment is prepared."""
    if apart:  # the config's own errors here, in a fraction of a second, before any process starts
        check_request(request)
    with PreparationProcess(PREPARE_JOB, request) if apart else contextlib.nullcontext() as child:
        from msfusion_ray.app.launching import FinishedRun, Launcher, open_run_dir  # Ray: beside the child's work

        with Launcher(exiting) as launcher:
            if child is not None:
                checked, shipment = prepared_apart(child, launcher, overlap=exiting)
            else:
                checked, shipment = prepare_here(request)
            if shipment.config.runtime.address:  # joined before anything is written: no cluster, no node for a class
                launcher.start_cluster(shipment.config.runtime, [shipment.config], shipment.fleet.class_names())
            run_dir = open_run_dir(checked, shipment, request.overrides)
            summary = launcher.launch(shipment, run_dir, checked.resumed is not None, show_progress)
            return FinishedRun(run_dir.path, shipment.config, summary)


PREPARE_JOB = "msfusion_ray.app.preparation:check_then_prepare"


def prepare_here(request: RunRequest) -> tuple[CheckedRun, Shipment]:
    """Check and prepare in this process."""
    from msfusion_ray.app import preparation  # torch: where a run is prepared in this process, not apart
    from msfusion_ray.experiment.shipment import Shipment

    checked = preparation.check_whole(request)
    return checked, Shipment.of(preparation.prepare_checked(checked))


def prepared_apart(child: PreparationProcess, launcher: Launcher, overlap: bool) -> tuple[CheckedRun, Shipment]:
    """What the child process checked (the whole config: it notes it) and prepared. With `overlap` the embedded
    cluster starts as soon as the config is checked, beside the expensive part of preparing (data, footprint
    planning): the process ends right after, and takes a cluster started for input that turned out bad down with
    it. Where the kernel would not (no fate sharing), or the run joins a cluster, the cluster starts once the
    experiment is prepared. Bad input comes first (exit code 2), whatever the cluster did."""
    failed: ClusterStartError | None = None
    checked: CheckedRun = child.note()
    if overlap and not checked.config.runtime.address and fate_sharing_supported():
        try:
            launcher.start_cluster(checked.config.runtime, [checked.config])
        except ClusterStartError as err:
            failed = err
    shipment = child.result()
    if failed is not None:
        raise failed
    return checked, shipment
