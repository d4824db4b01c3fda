"""GPU hosts without a GPU: which device a run resolves to, how hosts share GPUs, NVML telemetry (a stand-in NVML
module where the real library is missing), and what a real GPU adds (those tests skip cleanly without one)."""

import math
import sys
import types

import numpy as np
import pytest
import torch

from msfusion_ray.costs.memory import cuda_peak
from msfusion_ray.devices import gpu
from msfusion_ray.devices.gpu import GpuSample, GpuSampler, NvmlMonitor, host_budget_bytes
from msfusion_ray.devices.gpu_share import gpu_share, resolve_device
from msfusion_ray.errors import UserInputError
from msfusion_ray.records import HostStepRow, ParticipantRoundRow, host_rows

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_the_device_is_cpu_unless_the_cluster_has_gpus():
    assert resolve_device("cpu", 8) == "cpu"
    assert resolve_device("auto", 0) == "cpu"
    assert resolve_device("auto", 2) == "cuda"
    assert resolve_device("cuda", 0.5) == "cuda"
    with pytest.raises(UserInputError) as refused:
        resolve_device("cuda", 0)
    assert refused.value.where == "runtime.device" and "no GPUs" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("hosts, gpus, share", [(1, 2, 1.0), (2, 2, 1.0), (3, 2, 0.5), (4, 2, 0.5), (3, 1, 0.3333),
                                                (8, 1, 0.125), (4, 2 / 3, 0.1666), (4, 0.5, 0.125)])
def test_hosts_share_the_gpus_evenly_in_fractions_ray_can_seat(hosts, gpus, share):
    got = gpu_share(gpus, hosts)
    assert got == share
    per_gpu = math.floor(1 / got + 1e-9)  # Ray seats a fraction of a GPU within one GPU
    assert per_gpu * max(1, math.floor(gpus + 1e-9)) >= hosts or gpus < 1
    assert hosts * got <= gpus + 1e-9  # the hosts never ask for more GPU than there is


def test_a_requested_share_is_kept_where_every_host_has_a_seat():
    assert gpu_share(2, 6, requested=0.3) == 0.3  # three a GPU
    with pytest.raises(UserInputError) as refused:
        gpu_share(2, 5, requested=0.5)
    assert refused.value.where == "runtime.gpus_per_host" and "seat 4 hosts" in str(refused.value)


def test_a_host_may_plan_its_share_of_the_gpu_less_a_cuda_context():
    total = 16 * 2**30
    assert host_budget_bytes(total, 0.25) == 4 * 2**30 - gpu.CUDA_CONTEXT_RESERVE_BYTES
    assert 4 * host_budget_bytes(total, 0.25) < total


@no_cuda
def test_cuda_on_a_machine_without_gpus_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(gpu, "cluster_gpus", lambda: None)  # no Ray session open: the embedded cluster is this machine
    with pytest.raises(UserInputError) as refused:
        gpu.check_device("cuda", address=None)
    assert refused.value.where == "runtime.device"
    gpu.check_device("auto", address=None)
    gpu.check_device("cuda", address="10.0.0.1:6379")  # a cluster still to be joined: its driver checks


def test_an_open_session_is_checked_by_its_own_gpus(monkeypatch):
    monkeypatch.setattr(gpu, "cluster_gpus", lambda: 0.0)
    with pytest.raises(UserInputError, match="no GPUs"):
        gpu.check_device("cuda", address="10.0.0.1:6379")
    monkeypatch.setattr(gpu, "cluster_gpus", lambda: 2.0)
    gpu.check_device("cuda", address=None)


@no_cuda
def test_the_cli_refuses_cuda_without_gpus_in_one_line_with_exit_code_2(tmp_path, capsys, small_config_dict):
    import yaml

    from msfusion_ray.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_config_dict))
    for command in ("run", "validate"):
        assert main([command, str(path), "--set", "runtime.device=cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: runtime.device: cuda, but")
    assert not (tmp_path / "runs").exists()
    assert main(["run", str(path), "--set", "runtime.device=gpu"]) == 2  # not one of auto, cpu, cuda
    assert "runtime.device" in capsys.readouterr().err


@no_cuda
def test_cuda_with_a_cpu_only_torch_on_a_gpu_machine_says_so(monkeypatch):
    monkeypatch.setattr(gpu, "nvml_gpu_count", lambda: 2)
    monkeypatch.setattr(gpu, "cluster_gpus", lambda: None)
    with pytest.raises(UserInputError, match="CPU-only build"):
        gpu.check_device("cuda", address=None)


class FakeNvml(types.ModuleType):
    """The parts of pynvml the telemetry uses, for one GPU of 16 GiB."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init=False):
        super().__init__("pynvml")
        self.fail_init = fail_init
        self.used = [2 * 2**30, 5 * 2**30, 3 * 2**30]
        self.util = [10.0, 90.0, 50.0]
        self.calls = 0

    def nvmlInit(self):  # noqa: N802 (NVML's names)
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        if uuid != "GPU-1234":
            raise self.NVMLError("Not Found")
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802
        return "handle"

    def nvmlDeviceGetName(self, handle):  # noqa: N802
        return b"Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        used = self.used[self.calls % len(self.used)]
        return types.SimpleNamespace(total=16 * 2**30, used=used, free=16 * 2**30 - used)

    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        util = self.util[self.calls % len(self.util)]
        self.calls += 1
        return types.SimpleNamespace(gpu=util, memory=0)


def test_without_nvml_there_is_no_monitor_and_nothing_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    assert NvmlMonitor.open("1234") is None and gpu.nvml_gpu_count() == 0
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))  # installed, no driver library
    assert NvmlMonitor.open("1234") is None and gpu.nvml_gpu_count() == 0


def test_nvml_samples_the_gpu_torch_names_by_its_uuid(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    monitor = NvmlMonitor.open("1234")
    assert monitor is not None and monitor.name() == "Fake GPU"
    assert monitor.sample() == GpuSample(2 * 2**30, 16 * 2**30, 10.0)
    assert NvmlMonitor.open("9999") is None  # a GPU NVML does not know: no telemetry rather than another GPU's


def test_cuda_visible_devices_picks_the_gpu_without_a_uuid(monkeypatch):
    fake = FakeNvml()
    picked = []
    monkeypatch.setattr(fake, "nvmlDeviceGetHandleByIndex", lambda index: picked.append(index) or "handle",
                        raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert NvmlMonitor.open(None) is not None and picked == [3]


def test_a_window_gets_the_samples_taken_while_it_is_open():
    samples = iter([GpuSample(100, 1000, 20.0), GpuSample(400, 1000, 80.0), GpuSample(300, 1000, 50.0), None,
                    GpuSample(200, 1000, 10.0), GpuSample(100, 1000, 0.0), GpuSample(150, 1000, 30.0)])
    sampler = GpuSampler(lambda: next(samples))  # not started: samples only when told
    with sampler.window() as outer:  # one sample as it opens
        sampler.record()
        with sampler.window() as inner:  # the third sample, as it opens
            sampler.record()  # None: NVML did not answer, nothing recorded
        sampler.record()  # the fifth closed inner; the sixth is outer's alone, and the seventh closes it
    assert inner.samples == 2 and inner.used_max_bytes == 300 and inner.util_mean_pct == pytest.approx(30.0)
    assert outer.samples == 6 and outer.used_max_bytes == 400 and outer.total_bytes == 1000
    assert outer.util_max_pct == 80.0
    with pytest.raises(StopIteration):
        sampler.record()  # nothing left: every sample was taken by a window


def test_host_rows_weight_utilisation_by_samples_and_count_hosts_on_each_gpu():
    def row(host, status, samples, util, util_max, used, peak):
        return ParticipantRoundRow(run_id="r", round=1, participant=host, device="d", host=host, status=status,
                                   task=0, gpu_samples=samples, gpu_util_pct=util, gpu_util_max_pct=util_max,
                                   gpu_used_bytes=used, gpu_total_bytes=1000, mem_peak_gpu_bytes=peak,
                                   wall_total_s=1.5)

    hosts = [{"host": h, "device": "cuda", "gpu": "GPU-a" if h < 2 else "GPU-b", "gpu_name": "x",
              "gpu_fraction": 0.5, "gpu_budget_bytes": 400} for h in range(3)]
    rows = [row(0, "ok", 1, 90.0, 90.0, 700, 300), row(0, "ok", 3, 10.0, 20.0, 500, 350), row(1, "oom", 0,
                                                                                            math.nan, math.nan, 0, 0)]
    got = host_rows("r", 1, hosts, rows)
    assert [r.hosts_on_gpu for r in got] == [2, 2, 1]
    first = got[0]
    assert first.tasks == 2 and first.tasks_ok == 2 and first.gpu_samples == 4
    assert first.gpu_util_mean_pct == pytest.approx((90 + 3 * 10) / 4) and first.gpu_util_max_pct == 90.0
    assert first.gpu_used_max_bytes == 700 and first.mem_peak_gpu_bytes == 350 and first.wall_busy_s == 3.0
    assert got[1].tasks_oom == 1 and math.isnan(got[1].gpu_util_mean_pct)
    assert got[2].tasks == 0 and isinstance(got[2], HostStepRow)


def test_cuda_peak_measures_nothing_on_cpu():
    with cuda_peak(torch.device("cpu")) as peak:
        torch.ones(1000)
    assert peak.peak_bytes == 0


@needs_cuda
def test_cuda_peak_is_reset_at_the_start_of_each_block():
    device = torch.device("cuda", 0)
    big = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    del big
    with cuda_peak(device) as peak:
        small = torch.empty(2**20, dtype=torch.uint8, device=device)
    assert 2**20 <= peak.peak_bytes < 64 * 2**20
    del small


@needs_cuda
def test_a_batch_goes_to_the_models_device():
    from msfusion_ray.config import DataConfig
    from msfusion_ray.data import load_data

    data = load_data(DataConfig(train_samples=64, eval_samples=32), seed=0)
    x, y = data.to_batch(data.train.x[:8], data.train.y[:8], torch.device("cuda", 0))
    cpu_x, cpu_y = data.to_batch(data.train.x[:8], data.train.y[:8])
    assert x.is_cuda and y.is_cuda
    assert np.array_equal(x.cpu().numpy(), cpu_x.numpy()) and np.array_equal(y.cpu().numpy(), cpu_y.numpy())


def test_a_sweeps_cells_share_the_gpus_unless_they_say_otherwise():
    import dataclasses

    from msfusion_ray.app.sweep import with_gpu_share
    from msfusion_ray.experiment.config_check import config_from_dict
    from tests.conftest import SMALL_CONFIG

    @dataclasses.dataclass
    class Cell:  # what with_gpu_share reads of a prepared cell (a Shipment)
        config: object
        fleet: list

        def with_config(self, config: object) -> "Cell":
            return dataclasses.replace(self, config=config)

    def cell(**runtime):
        data = {**SMALL_CONFIG, "runtime": {**SMALL_CONFIG["runtime"], "hosts": 4, **runtime}}
        return Cell(config_from_dict(data), fleet=list(range(8)))

    assert with_gpu_share(cell(device="auto"), 2 / 3, 16).config.runtime.gpus_per_host == 0.1666  # 3 cells, 2 GPUs
    assert with_gpu_share(cell(device="cuda", gpus_per_host=0.5), 0.5, 16).config.runtime.gpus_per_host == 0.5
    assert with_gpu_share(cell(device="cpu"), 0.5, 16).config.runtime.gpus_per_host is None
