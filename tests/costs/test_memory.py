"""The live-tensor tracker: peaks against hand counts, nothing of Python run when torch frees a tracked storage, and
the sequence that crashed the suite (FLOP counting, then footprint planning's backward with Ray alive in the
process and Python's collector running in Ray's thread) looped in a process of its own; the resident-set peak
read through /proc/self files kept open."""

import gc
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import psutil
import torch

from msfusion_ray.costs.memory import TensorPeakTracker, proc_memory, rss_peak

FLOAT_BYTES = 4


def test_peak_is_the_most_bytes_alive_at_once():
    resident = torch.zeros(100)
    with TensorPeakTracker() as tracker:
        tracker.track([resident])
        a = torch.ones(1000)          # 400 + 4000
        b = a * 2                     # + 4000 = 8400
        del a                         # 4400
        c = b + 1                     # 8400 again, not above the peak
        d = torch.cat([b, c])         # + 8000 = 16400: the peak
        del b, c, d
        e = torch.ones(10)            # 440
    assert tracker.peak_bytes == (100 + 1000 + 1000 + 2000) * FLOAT_BYTES
    assert tracker.live_bytes == (100 + 10) * FLOAT_BYTES
    del e


def test_views_and_in_place_ops_count_their_storage_once():
    with TensorPeakTracker() as tracker:
        a = torch.ones(1000)
        view = a[10:]
        a.add_(1)
        view.mul_(2)
    assert tracker.peak_bytes == 1000 * FLOAT_BYTES


def test_freeing_a_tracked_storage_runs_no_python_code():
    """torch frees storages inside its C++ kernels and autograd's backward: code of ours run there (as weak
    reference callbacks did) can meet the process in any state."""
    calls = []
    tensor = torch.randn(256)
    with TensorPeakTracker() as tracker:
        tracker.track([tensor])
        other = tensor * 3
    sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code.co_filename) if event == "call" else None)
    try:
        del tensor, other
    finally:
        sys.setprofile(None)
    assert not [name for name in calls if "msfusion_ray" in name]
    assert tracker.live_bytes == 0


def test_the_tracker_is_freed_without_the_cycle_collector():
    gc.disable()
    try:
        kept = torch.randn(64)
        with TensorPeakTracker() as tracker:
            tracker.track([kept])
            (kept * 2).sum()
        ref = weakref.ref(tracker)
        del tracker
        assert ref() is None
    finally:
        gc.enable()


STRESS = textwrap.dedent("""
    import gc, random, sys, threading, time
    import faulthandler; faulthandler.enable()
    from msfusion_ray.runtime.cluster import apply_offline_env, start_local_ray
    apply_offline_env()
    import torch
    from torch import nn
    from msfusion_ray.costs.flops import count_flops
    from msfusion_ray.costs.footprint import plan_footprint
    from msfusion_ray.models import DataShape, build_family
    from msfusion_ray.training.losses import loss_of

    start_local_ray(num_cpus=1, include_dashboard=False, object_store_memory=128 * 1024**2)
    stop = threading.Event()
    def collect():  # what Ray's PythonGCThread does when its core worker asks for it, here at random moments
        rng = random.Random(0)
        while not stop.wait(rng.random() * 0.02):
            gc.collect()
    threading.Thread(target=collect, daemon=True).start()
    family = build_family("resnet18", DataShape((1, 32, 32), 10), 0.125)
    peaks = set()
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        layer, conv = nn.Linear(20, 30), nn.Conv2d(3, 16, 3, padding=1, bias=False)
        count_flops(lambda: layer(torch.randn(8, 20)).sum().backward())
        count_flops(lambda: conv(torch.randn(4, 3, 10, 10)))
        torch.manual_seed(0)
        model = family.build()
        batch = (torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,)))
        peaks.add(plan_footprint(model, batch, loss_of("classification"), 1).measured_step)
    stop.set()
    assert len(peaks) == 1, peaks
    print("peak", peaks.pop())
""")


def test_flop_counting_then_planning_beside_ray_does_not_crash(tmp_path):
    """The suite died here (segmentation fault, abort, or a hang in the tracker's backward); in a process of its
    own, so that a crash fails this test rather than the suite."""
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    done = subprocess.run([sys.executable, "-X", "faulthandler", str(script), "20"], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("peak ")


def test_resident_set_is_read_as_psutil_reads_it_and_a_block_s_rise_is_seen():
    memory = proc_memory()
    assert memory is proc_memory()  # the files are opened once per process
    assert abs(memory.rss_bytes() - psutil.Process().memory_info().rss) < 8 * 2**20
    assert memory.status_kib("VmHWM") * 1024 >= memory.rss_bytes() - 8 * 2**20
    assert memory.status_kib("NoSuchField") is None
    with rss_peak() as peak:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # written: resident
    assert block.sum() > 0 and peak.delta_bytes >= 48 * 2**20
    with rss_peak() as quiet:
        pass
    assert quiet.delta_bytes < 16 * 2**20  # the high-water mark was reset at the block's start
