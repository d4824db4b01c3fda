"""Co-S2P without Ray: rates from memory for both phases, the local procedure (mask learnt, then reused; the pruned
network trained on every exit; the delta on the mask), and the staleness/importance aggregation."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from msfusion_ray.config import DataConfig, StrategyConfig, TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.data import load_data
from msfusion_ray.devices.capacity import CapacityOracle, make_planner
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.weights import to_weights
from msfusion_ray.procedures.cos2p import mask_footprint, rate_widths, training_footprint
from msfusion_ray.runtime.participant import ParticipantSpec, ParticipantWorker, WorkerSettings
from msfusion_ray.strategies import make_strategy
from msfusion_ray.strategies.base import ParticipantInfo, Update

VIT = {"d_model": 32, "n_heads": 4, "n_layers": 4, "mlp_ratio": 2.0, "patch": 8}  # exits after 1, 2, 3, 4 blocks
TRAINING = TrainingConfig(batch_size=16, local_steps=4, optimizer="adam", lr=1e-3)
PROFILE = DeviceProfile(name="tiny", description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(train_samples=200, eval_samples=50, pad_to=32), seed=0)


def _strategy(family, **params):
    return make_strategy(StrategyConfig(name="cos2p", params={"mask_epochs": 1, **params}), family, seed=0)


class FakeFleet:
    """Memory caps of one device class without a memory-need model (what the oracle reads)."""

    profiles = ()

    def __init__(self, caps):
        self.memory_caps = np.asarray(caps, dtype=np.int64)
        self.profile_of = np.zeros(len(self.memory_caps), dtype=np.int64)


def _oracle(family, caps):
    return CapacityOracle(FakeFleet(caps), family, make_planner(family, TRAINING), TRAINING.batch_size)


def test_rates_are_the_largest_whose_training_and_mask_phases_both_fit(data):
    family = build_family("vit", data.shape, 1.0, VIT)
    planner = make_planner(family, TRAINING)
    train = planner.variant("t", **training_footprint("classification"))
    mask = planner.variant("m", **mask_footprint(family))
    full = train.footprint(family.full_widths(), 16).total
    caps = [full - 1, full // 2, full // 3]
    strategy = _strategy(family)
    infos = [ParticipantInfo(i, "tiny", 25) for i in range(3)]
    global_family = strategy.configure(_oracle(family, caps), infos)
    for pid, cap in enumerate(caps):
        rate, depth = strategy.rates[pid], strategy.depths[pid]
        groups = family.groups_at(depth)
        assert train.footprint(rate_widths(groups, rate, True), 16, depth).total <= cap
        assert mask.footprint(groups, 16, depth).total <= cap
        bigger = rate + 1 / 64
        widths, deeper = strategy.training_shape(bigger)
        mask_groups, mask_depth = strategy.mask_shape(bigger)
        assert (train.footprint(widths, 16, deeper).total > cap
                or mask.footprint(mask_groups, 16, mask_depth).total > cap), (pid, rate)
        assert depth in family.exit_depths() and depth <= max(1, int(rate * 4))
    assert strategy.rates[0] > strategy.rates[1] > strategy.rates[2]
    # nobody holds all four blocks: the global model is cut after the deepest exit held
    assert strategy.depths.max() < 4 and global_family.depth == strategy.depths.max()


def test_the_codes_tier_table_snaps_rates_down(data):
    family = build_family("vit", data.shape, 1.0, VIT)
    strategy = _strategy(family, rate_levels=[0.25, 0.5, 0.75, 1.0])
    strategy.configure(_oracle(family, [10**9, 10**9]), [ParticipantInfo(0, "tiny", 25), ParticipantInfo(1, "t", 25)])
    assert strategy.rates.tolist() == [1.0, 1.0] and strategy.depths.tolist() == [4, 4]
    assert strategy.depth_at(0.5) == 2 and strategy.depth_at(0.74) == 2 and strategy.depth_at(0.1) == 1


def _setup(data, cap=10**9, **params):
    family = build_family("vit", data.shape, 1.0, VIT)
    strategy = _strategy(family, **params)
    infos = [ParticipantInfo(0, "tiny", 40)]
    global_family = strategy.configure(_oracle(family, [cap]), infos)
    strategy.rates[0], strategy.depths[0] = 0.5, 2  # a cut of two blocks at half width
    settings = WorkerSettings(run_id="t", host=0, seed=0, training=TRAINING)
    worker = ParticipantWorker(ParticipantSpec(0, PROFILE, cap, np.arange(40)), global_family, data, settings,
                               StepCostCache())
    return strategy, worker, infos[0], to_weights(global_family.build())


def _run(strategy, worker, info, weights, version, task, state_from):
    order = replace(strategy.order(info, version, None), task=task, state_from=state_from, seed_key=(task,), base_version=version)
    row, payload, trained = worker.run(order, lambda: strategy.payload(order, weights), lr=1e-3)
    assert row.status == "ok", row.message
    return order, row, Update(0, payload, row.samples, base_version=version, trained=trained)


def test_the_mask_is_learnt_in_the_first_tasks_then_reused_and_the_delta_lies_on_it(data):
    strategy, worker, info, weights = _setup(data, mask_rounds=2)
    history = {0: weights}
    first, row, update = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    assert first.selection is None and first.depth == 2 and first.procedure.params["learn_mask"]
    assert row.metrics["mask_learnt"] == 1.0 and row.metrics["mask_flops"] > 0 and row.metrics["exits"] == 2
    mask = update.trained["selection"]
    assert set(mask) == {"block0.heads", "block0.mlp", "block1.heads", "block1.mlp"}
    assert all(1 <= len(units) <= {"heads": 2, "mlp": 32}[g.split(".")[1]] for g, units in mask.items())
    # the delta covers the pruned network only, and is a delta (small against the weights)
    assert update.weights["blocks.0.mlp.fc.weight"].shape == (len(mask["block0.mlp"]), 32)
    assert "blocks.2.mlp.fc.weight" not in update.weights and "exits.2.linear.weight" not in update.weights
    assert np.abs(update.weights["exits.1.linear.weight"]).max() > 0
    buffer = strategy.new_buffer(weights)
    strategy.fold(buffer, first, update, staleness=0, history=history)
    assert strategy.masks_learnt == {0: 1} and strategy.learns_mask(0)

    second, row, update = _run(strategy, worker, info, weights, 0, task=1, state_from=0)
    assert second.procedure.params["learn_mask"] and row.metrics["mask_learnt"] == 1.0
    strategy.fold(buffer, second, update, staleness=0, history=history)
    kept = strategy.masks[0]
    assert not strategy.learns_mask(0)

    third, row, update = _run(strategy, worker, info, weights, 0, task=2, state_from=1)
    assert not third.procedure.params["learn_mask"] and row.metrics["mask_learnt"] == 0.0
    assert all(np.array_equal(third.selection[g], kept[g]) for g in kept)  # reused, not relearnt
    assert row.bytes_down < sum(v.nbytes for k, v in weights.items() if k in strategy.family.depth_keys(2))
    assert np.array_equal(update.trained["selection"]["block1.mlp"], kept["block1.mlp"])
    new, metrics = strategy.aggregate(0, weights, buffer, history)
    assert metrics["updates"] == 2 and metrics["staleness_mean"] == 0
    assert not np.array_equal(new["blocks.0.mlp.fc.weight"], weights["blocks.0.mlp.fc.weight"])
    assert np.array_equal(new["blocks.3.mlp.fc.weight"], weights["blocks.3.mlp.fc.weight"]) or \
        "blocks.3.mlp.fc.weight" not in new


def test_distillation_starts_at_kd_start_round(data):
    strategy, *_ = _setup(data, kd_start_round=3)
    info = ParticipantInfo(0, "tiny", 40)
    assert not strategy.order(info, 2, None).procedure.params["distill"]
    assert strategy.order(info, 3, None).procedure.params["distill"]
    assert not _setup(data, kd_start_round=3, distill=False)[0].order(info, 5, None).procedure.params["distill"]


def test_without_pruning_the_participant_trains_its_depth_cut_at_full_width(data):
    strategy, worker, info, weights = _setup(data, prune=False)
    order, row, update = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    assert order.selection is None and not order.procedure.params["learn_mask"]
    assert update.trained == {} and row.metrics["kept_fraction"] == 1.0 and "mask_flops" not in row.metrics
    assert update.weights["blocks.1.mlp.fc.weight"].shape == weights["blocks.1.mlp.fc.weight"].shape
    assert set(update.weights) == strategy.family.depth_keys(2)


def test_local_exit_heads_stay_with_the_participant(data):
    strategy, worker, info, weights = _setup(data, prune=False, exit_heads="local")
    _, _, update = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    assert not any(k.startswith("exits.") for k in update.weights)
    kept = worker.states[0]["exit_heads"]
    assert set(kept) == {f"exits.{i}.{p}" for i in (0, 1) for p in ("norm.weight", "norm.bias", "linear.weight",
                                                                    "linear.bias")}
    assert not np.array_equal(kept["exits.0.linear.weight"], weights["exits.0.linear.weight"])


def test_a_participant_whose_mask_phase_does_not_fit_is_refused_naming_the_phase(data):
    strategy, worker, info, weights = _setup(data)
    order = strategy.order(info, 0, None)
    mask_need = make_planner(strategy.family, TRAINING).variant("m", **mask_footprint(strategy.family)).footprint(
        strategy.family.groups_at(2), 16, 2).total
    worker.spec = ParticipantSpec(0, PROFILE, mask_need - 1, np.arange(40))
    row, payload, _ = worker.run(order, lambda: strategy.payload(order, weights), lr=1e-3)
    assert row.status == "oom" and payload is None and row.message.startswith("mask phase needs")


def test_stale_updates_weigh_less_by_the_drift_of_the_model_they_trained_from(data):
    strategy, worker, info, weights = _setup(data, prune=False)
    order, _, update = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    moved = {k: v + 0.01 for k, v in weights.items()}
    history = {0: weights, 1: moved}
    fresh, stale = strategy.new_buffer(moved), strategy.new_buffer(moved)
    strategy.fold(fresh, order, update, staleness=0, history={0: weights})
    strategy.fold(stale, order, update, staleness=1, history=history)
    drift = sum(v.size for v in weights.values()) * 0.01
    assert stale.drifts[0] == pytest.approx(drift, rel=1e-3) and fresh.drifts[0] == 0
    assert stale.raw_weights[0] == pytest.approx(fresh.raw_weights[0] / (drift + 1), rel=1e-3)


def test_the_drift_is_measured_from_the_model_the_participant_trained_from_to_the_current_one(data):
    """Versions 0..3 of the global model differ by 0.01, 0.03, 0.06 everywhere; an update trained from version 1
    that meets version 3 (staleness 2) drifted by ||w3 - w1||_1, not by any other pair's distance."""
    strategy, worker, info, weights = _setup(data, prune=False)
    order, _, update = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    shifts = {0: 0.0, 1: 0.01, 2: 0.03, 3: 0.06}
    history = {v: {k: w + np.float32(shift) for k, w in weights.items()} for v, shift in shifts.items()}
    update = Update(0, update.weights, update.samples, base_version=1, trained=update.trained)
    buffer = strategy.new_buffer(history[3])
    strategy.fold(buffer, order, update, staleness=2, history=history)
    entries = sum(v.size for v in weights.values())
    assert buffer.drifts == [pytest.approx(entries * 0.05, rel=1e-3)]
    assert buffer.staleness == [2]


def test_device_time_is_predicted_exactly_for_a_task_with_a_kept_mask_and_not_for_a_mask_task(data):
    from msfusion_ray.costs.flops import TrainingStepFlops
    from msfusion_ray.procedures.base import make_procedure
    from msfusion_ray.training.local import batch_sizes

    strategy, worker, info, weights = _setup(data, mask_rounds=1)
    first, _, update = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    sizes = batch_sizes(40, TRAINING)
    unused = TrainingStepFlops(strategy.family.build, strategy.family.example_batch, None)
    assert make_procedure(first.procedure).predict_flops(strategy.family, first, sizes, unused) is None
    strategy.fold(strategy.new_buffer(weights), first, update, 0, {0: weights})
    second, row, _ = _run(strategy, worker, info, weights, 0, task=1, state_from=0)
    assert make_procedure(second.procedure).predict_flops(strategy.family, second, sizes, unused) == row.flops


def test_the_mask_phase_can_be_a_number_of_batches_instead_of_epochs(data):
    strategy, worker, info, weights = _setup(data, mask_steps=3)
    _, row, _ = _run(strategy, worker, info, weights, 0, task=0, state_from=-1)
    assert row.metrics["mask_steps"] == 3 and row.steps == 3 + TRAINING.local_steps - TRAINING.local_steps // 2


def test_a_model_without_early_exits_is_a_one_line_error_naming_the_field(data):
    from msfusion_ray.errors import UserInputError

    with pytest.raises(UserInputError, match="model.name"):
        _strategy(build_family("cnn", data.shape, 0.25))
    plain = build_family("transformer", DataShape((16,), 50, "language_model"), 1.0, {"d_model": 16, "n_heads": 2})
    with pytest.raises(UserInputError, match="early_exits"):
        _strategy(plain)


def test_the_codes_rules_are_the_defaults(data):
    """Issue 25, items 4 and 6: one task per participant until the aggregation that takes its update, the KL
    averaged over classes as nn.KLDivLoss() does, and a mask phase that trains what the code's mask model trains."""
    strategy, _, info, _ = _setup(data)
    assert strategy.schedule().dispatch == "after_aggregation"
    params = strategy.order(info, 12, None).procedure.params
    assert params["kd_reduction"] == "mean" and params["mask_trains"] == "code"
    assert _strategy(strategy.base_family, dispatch="on_arrival").schedule().dispatch == "on_arrival"


@pytest.mark.parametrize("trains", ["code", "scores"])
def test_the_mask_phase_trains_what_the_codes_mask_model_trains_and_the_update_carries_it(data, trains):
    """The code's mask model freezes the patch embedding and the masked linears (qkv, the attention output, both MLP
    layers, biases included) and trains the class token, the positions, every LayerNorm and its exit head with the
    scores; the weight model starts from those and the update is taken against what was received. With the
    training phase's learning rate at 0, the update of a mask task is the mask phase's own training."""
    from msfusion_ray.pruning.masks import MaskedNetwork

    strategy, worker, info, weights = _setup(data, mask_trains=trains, mask_lr=0.01)
    network = MaskedNetwork(strategy.family.build(depth=2), strategy.family.groups_at(2), trains=trains)
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    scores = {name for name in trainable if name.startswith("scores.")}
    assert len(scores) == 4
    if trains == "scores":
        assert trainable == scores
    else:
        assert trainable - scores == {f"network.{k}" for k in
                                      ("cls_token", "pos_embedding", *[f"blocks.{b}.{ln}.{p}" for b in (0, 1)
                                                                       for ln in ("ln1", "ln2")
                                                                       for p in ("weight", "bias")],
                                       *[f"exits.{e}.{m}.{p}" for e in (0, 1) for m in ("norm", "linear")
                                         for p in ("weight", "bias")])}
    order = replace(strategy.order(info, 0, None), task=0, state_from=-1, seed_key=(0,), base_version=0)
    row, update, _ = worker.run(order, lambda: strategy.payload(order, weights), lr=0.0)
    assert row.status == "ok", row.message
    moved = {k for k, v in update.items() if np.abs(v).max() > 0}
    if trains == "scores":
        assert moved == set()
    else:  # the deepest exit of the cut is the one the mask model trains
        assert {"cls_token", "pos_embedding", "blocks.0.ln1.weight", "blocks.1.ln2.bias",
                "exits.1.norm.weight", "exits.1.linear.weight"} <= moved
        assert not any(k.startswith(("patches.", "exits.0.")) or ".attn." in k or ".mlp." in k for k in moved)
