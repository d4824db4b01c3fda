"""The virtual timeline from hand-made records: segments per device, staleness shares, idle share."""

import pytest

from analysis.timeline import figure_staleness, figure_virtual_timeline, idle_share, staleness_counts, task_segments
from tests.analysis.fixtures import make_run, participant


def async_run(strategy="fedbuff", seed=0):
    """Two devices, two aggregations at 4 s and 6 s: device 0 works 0-2 and 2-4 (0.5 s download, 1 s compute, 0.5 s
    upload each time) and 4-6; device 1 works 0-6, is aggregated with staleness 1, then is dropped."""
    def task(rnd, pid, start, end, **values):
        length = end - start
        return participant(rnd, pid, vt_start=start, vt_end=end, device_time_s=length, device_comm_s=length / 2,
                           device_download_s=length / 4, device_upload_s=length / 4, device_compute_s=length / 2,
                           **values)
    rows = [task(1, 0, 0.0, 2.0, staleness=0), task(1, 0, 2.0, 4.0, staleness=0),
            task(2, 0, 4.0, 6.0, staleness=0), task(2, 1, 0.0, 6.0, staleness=1),
            participant(2, 1, status="dropped", vt_start=6.0, vt_end=6.5, device_time_s=0.5, device_comm_s=0.5,
                        device_download_s=0.5)]
    return make_run(strategy, seed, 2, [dict(vt_start=0.0, vt_end=4.0, test_accuracy=0.5),
                                        dict(vt_start=4.0, vt_end=6.0, test_accuracy=0.6)], rows)


def test_tasks_become_communication_then_training_then_communication():
    segments = task_segments(async_run())
    first = segments[(segments["participant"] == 0) & (segments["start_s"] < 2.0)]
    assert first[["kind", "start_s", "duration_s"]].values.tolist() == [
        ["communicating", 0.0, 0.5], ["training", 0.5, 1.0], ["communicating", 1.5, 0.5]]
    dropped = segments[segments["start_s"] >= 6.0]
    assert dropped["kind"].tolist() == ["communicating"] and dropped["duration_s"].tolist() == [0.5]


def test_staleness_shares_and_idle_time():
    counts = staleness_counts([async_run()])
    assert counts[["staleness", "updates"]].values.tolist() == [[0, 3], [1, 1]]
    assert counts["share"].tolist() == [0.75, 0.25]
    assert idle_share(async_run()) == pytest.approx(0.0)  # both devices busy from 0 to the last aggregation


def test_figures_are_drawn_from_the_records():
    run = async_run()
    assert figure_virtual_timeline(run) is not None and figure_staleness([run]) is not None
