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
    """The timeline draws each device's lane (waiting behind), each task segment where the records put it, and a
    line at each aggregation; the staleness figure a bar per staleness at its share of the aggregated updates."""
    run = async_run()
    ax = figure_virtual_timeline(run).axes[0]
    bars = [(round(b.get_x(), 6), round(b.get_width(), 6), round(b.get_y() + b.get_height() / 2))
            for b in ax.patches]
    assert bars[:2] == [(0.0, 6.0, 0), (0.0, 6.0, 1)]  # the lanes: waiting, up to the last aggregation
    segments = task_segments(run, until_s=6.0)
    drawn = sorted(bars[2:])
    expected = sorted((round(s.start_s, 6), round(s.duration_s, 6), s.participant) for s in segments.itertuples())
    assert drawn == expected and len(drawn) == len(segments) > 0
    assert [line.get_xdata()[0] for line in ax.lines] == [4.0, 6.0]  # the aggregations
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    staleness = figure_staleness([run]).axes[0]
    assert [(round(b.get_x() + b.get_width() / 2), b.get_height()) for b in staleness.patches] == [(0, 0.75),
                                                                                                   (1, 0.25)]
