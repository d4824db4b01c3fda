"""Pipeline split learning in one process (stages and owners as plain objects, the link calling them directly):
1, 2 and 3 compute nodes train every owner's chain exactly as the owner's whole model would on the same batches,
copies are kept per owner, and the epoch's average equals FedAvg of the whole models."""

import numpy as np
import pytest
import torch

from msfusion_ray.config import DataConfig, TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.costs.layers import part_memory, profile_layers
from msfusion_ray.data import load_data
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.models import build_family
from msfusion_ray.models.layers import check_cuts, part_weights
from msfusion_ray.models.weights import to_weights
from msfusion_ray.pipeline.plan import PipelineParams
from msfusion_ray.runtime.participant import ParticipantSpec, ParticipantWorker, WorkerSettings
from msfusion_ray.runtime.pipeline_stage import Stage, StageLink
from msfusion_ray.strategies.base import Update, WorkOrder
from msfusion_ray.strategies.mpsl import MPSL
from msfusion_ray.splitting.aggregate import ScatterAccumulator

TRAINING = TrainingConfig(batch_size=8, local_epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)
PROFILE = DeviceProfile(name="owner", description="", memory_mib=1000, train_gflops=1, uplink_mbps=10,
                        downlink_mbps=10)
SAMPLES = (20, 13)  # the second owner's last batch of each pass is short
FRONT, BACK = (0, 1), (9, 11)  # ResNet-18: stem on the owner, then 8 blocks, then pool and classifier on the owner


@pytest.fixture(scope="module")
def setting():
    data = load_data(DataConfig(train_samples=200, eval_samples=20, pad_to=32), seed=0)
    family = build_family("resnet18", data.shape, 0.125)
    torch.manual_seed(0)
    start = to_weights(family.build())
    shards = [np.arange(0, SAMPLES[0]), np.arange(50, 50 + SAMPLES[1])]
    return data, family, start, shards


def _worker(pid, family, data, shards):
    spec = ParticipantSpec(pid, PROFILE, 10**9, shards[pid])
    return ParticipantWorker(spec, family, data, WorkerSettings(run_id="t", host=0, seed=3, training=TRAINING),
                             StepCostCache())


def _stages(family, n_nodes, start, owners):
    cuts = [round(FRONT[1] + (BACK[0] - FRONT[1]) * i / n_nodes) for i in range(1, n_nodes)]
    ranges = check_cuts(cuts, BACK[0] - FRONT[1], "cuts")
    ranges = [(a + FRONT[1], b + FRONT[1]) for a, b in ranges]
    stages = [Stage(p, family, r, TRAINING, seed=3, memory_cap_bytes=10**10, native=False) for p, r in enumerate(ranges)]
    for p, stage in enumerate(stages):
        stage.connect(stages[p + 1] if p + 1 < len(stages) else None, stages[p - 1] if p else None)
        stage.begin_epoch(1, start, owners, TRAINING.lr, planned_bytes=0)
    return stages


def _pipeline_epoch(setting, n_nodes):
    data, family, start, shards = setting
    strategy = MPSL(PipelineParams(), family, seed=3)
    stages = _stages(family, n_nodes, start, [0, 1])
    results = {}
    for pid in (0, 1):
        order = strategy.owner_order(pid, FRONT, BACK)
        extras = {**order.extras, "link": StageLink(pid, stages[0], stages[-1], 60.0), "planned_bytes": 0}
        order = WorkOrder(pid, procedure=order.procedure, extras=extras, task=pid, seed_key=(1,))
        results[pid] = _worker(pid, family, data, shards).run(order, lambda: strategy.payload(order, start),
                                                              TRAINING.lr)
    copies = {pid: {k: v for stage in stages for k, v in part_weights(stage.copies[pid][0]).items()}
              for pid in (0, 1)}
    accumulator = strategy.new_accumulator(start)
    for pid, (row, payload, _) in results.items():
        assert row.status == "ok", row.message
        strategy.fold_owner(accumulator, Update(pid, payload, row.samples))
    for stage in stages:
        averaged, report = stage.end_epoch({pid: results[pid][0].samples for pid in results})
        strategy.fold_part(accumulator, averaged)
        assert {entry[2] for entry in report["log"]} == {"forward", "backward"}
    return results, copies, strategy.combine(1, start, accumulator)[0]


def _whole_models(setting):
    """Each owner training the whole model on the same batches (the standard procedure, same seeds)."""
    data, family, start, shards = setting
    trained = {}
    for pid in (0, 1):
        row, weights, _ = _worker(pid, family, data, shards).run(WorkOrder(pid, task=pid, seed_key=(1,)),
                                                                 lambda: start, TRAINING.lr)
        trained[pid] = (row, weights)
    return trained


@pytest.mark.parametrize("n_nodes", [1, 2, 3])
def test_every_owners_chain_trains_as_its_whole_model_and_the_average_is_fedavg(setting, n_nodes):
    _, _, start, _ = setting
    results, copies, combined = _pipeline_epoch(setting, n_nodes)
    whole = _whole_models(setting)
    accumulator = ScatterAccumulator(start)
    for pid in (0, 1):
        row, weights = whole[pid]
        assert results[pid][0].samples == row.samples == 2 * SAMPLES[pid]
        chain = {**results[pid][1], **copies[pid]}  # the owner's parts and its copies on every node
        assert set(chain) == set(weights)
        for key in weights:
            np.testing.assert_allclose(chain[key], weights[key], rtol=1e-4, atol=1e-6, err_msg=f"{pid} {key}")
        assert results[pid][0].train_loss == pytest.approx(row.train_loss, rel=1e-5)
        accumulator.add(weights, None, weight=float(row.samples))
    fedavg = accumulator.result(start)
    for key in fedavg:
        np.testing.assert_allclose(combined[key], fedavg[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # the copies differ between owners (they saw different data) until the epoch's average
    assert any(not np.allclose(copies[0][k], copies[1][k]) for k in copies[0])


def test_owner_reports_each_batch_and_the_flops_add_up(setting):
    results, _, _ = _pipeline_epoch(setting, 2)
    row, _, trained = results[1]
    log = trained["pipeline_batches"]
    assert [entry["size"] for entry in log] == [8, 5] * 2  # two passes over 13 samples
    assert row.flops == sum(e["front_forward_flops"] + e["back_flops"] + e["front_backward_flops"] for e in log)
    assert all(e["activation_bytes"] == e["first_gradient_bytes"] for e in log)
    assert log[0]["activation_bytes"] == 8 * 8 * 32 * 32 * 4  # the stem's 8 channels at 32x32, float32


def test_a_stage_over_its_cap_builds_nothing(setting):
    _, family, start, _ = setting
    stage = Stage(0, family, (1, 9), TRAINING, seed=0, memory_cap_bytes=1000, native=False)
    verdict = stage.begin_epoch(1, start, [0, 1], 0.1, planned_bytes=5000)
    assert verdict == {"status": "oom", "planned_bytes": 5000} and stage.copies == {}


def test_planned_memory_bounds_what_owners_and_stages_measure(setting):
    data, family, start, shards = setting
    costs = profile_layers(family.layers(), family.example_batch(TRAINING.batch_size)[0])
    copies = TRAINING.optimizer_state_copies()
    results, _, _ = _pipeline_epoch(setting, 2)
    owner_planned = part_memory(costs, *FRONT, copies).total() + part_memory(costs, *BACK, copies).total()
    for row, _, _ in results.values():
        assert 0 < row.mem_peak_tensor_bytes <= owner_planned
    stages = _stages(family, 2, start, [0, 1])
    outputs = [stages[0].forward(pid, 0, np.random.default_rng(pid).standard_normal(
        (TRAINING.batch_size, 8, 32, 32), dtype=np.float32)) for pid in (0, 1)]  # both owners in flight at once
    for pid, output in zip((0, 1), outputs):
        stages[-1].backward(pid, 0, np.ones_like(output))
    for stage in stages:
        planned = part_memory(costs, *stage.range, copies).total(2, 2)
        assert 0 < stage.tracker.peak_bytes <= planned, stage.range
        stage.end_epoch({0: 8, 1: 8})
