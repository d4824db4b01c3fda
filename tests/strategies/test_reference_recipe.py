"""The baselines' reference recipe (static BatchNorm, Scaler, label-split masking) on toy cases worked by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from msfusion_ray.models.weights import to_weights
from msfusion_ray.splitting.index_map import extract
from msfusion_ray.splitting.spec import SplitSpec, class_outputs, width_axes
from msfusion_ray.strategies.base import ParticipantInfo, Update
from msfusion_ray.strategies.reference_recipe import RecipeParams, ReferenceRecipe
from msfusion_ray.training.losses import task_loss
from msfusion_ray.training.objective import ObjectiveContext
from tests.strategies.test_width_strategies import _setup


class Toy(nn.Module):
    """x (2) -> hidden width group h (3) -> BatchNorm -> ReLU -> 4 class scores."""

    def __init__(self, norm: bool = True):
        super().__init__()
        self.hidden = width_axes(nn.Linear(2, 3), out="h")
        self.norm = width_axes(nn.BatchNorm1d(3), out="h") if norm else nn.Identity()
        self.classifier = class_outputs(width_axes(nn.Linear(3, 4), inp="h"))
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.hidden.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
            self.classifier.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10)
            self.classifier.bias.zero_()

    def forward(self, x):
        return self.classifier(torch.relu(self.norm(self.hidden(x))))


def _recipe(model, **params):
    objective = ReferenceRecipe(RecipeParams(**params))
    objective.begin(model, ObjectiveContext(1, None, None, {}, {}))
    return objective


def test_static_batchnorm_normalises_by_the_batch_and_keeps_no_statistics():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # hidden pre-activations: [[1, 3, 2], [3, 5, 6]], mean [2, 4, 4]
    tracking, static = Toy(), Toy()
    tracking.train()(x)
    assert tracking.norm.running_mean.tolist() == pytest.approx([0.2, 0.4, 0.4])  # momentum 0.1 x batch mean
    objective = _recipe(static.train(), static_bn=True)
    out = static.norm(static.hidden(x))
    assert out.detach().flatten().tolist() == pytest.approx([-1, -1, -1, 1, 1, 1], abs=1e-3)  # batch statistics
    assert static.norm.running_mean.tolist() == [0.0, 0.0, 0.0]
    assert static.norm.running_var.tolist() == [1.0, 1.0, 1.0]
    assert int(static.norm.num_batches_tracked) == 0
    objective.end(static, None)
    assert static.norm.track_running_stats  # the model is left as it was


def test_scaler_divides_width_group_outputs_by_the_rate_in_training_only():
    model = Toy(norm=False)
    x = torch.tensor([[1.0, 2.0]])  # hidden: [1, 3, 2]
    objective = _recipe(model, scaler_rate=0.5)
    hidden = torch.tensor([[2.0, 6.0, 4.0]])  # [1, 3, 2] / 0.5
    expected = hidden @ model.classifier.weight.detach().T  # the classifier's outputs are classes, not width
    assert model.train()(x).detach().flatten().tolist() == pytest.approx(expected.flatten().tolist())
    plain = torch.tensor([[1.0, 3.0, 2.0]]) @ model.classifier.weight.detach().T
    assert model.eval()(x).detach().flatten().tolist() == pytest.approx(plain.flatten().tolist())  # no Scaler
    objective.end(model, None)
    assert model.train()(x).detach().flatten().tolist() == pytest.approx(plain.flatten().tolist())


def test_label_mask_zeroes_absent_classes_logits_and_their_rows_gradients():
    model = Toy(norm=False).train()
    objective = _recipe(model, classes=[0, 2])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([2])
    logits = model(x)
    masked = objective.task_logits(logits)
    l0, l2 = float(logits[0, 0].detach()), float(logits[0, 2].detach())
    assert masked.detach().flatten().tolist() == pytest.approx([l0, 0.0, l2, 0.0])
    loss = task_loss("classification", masked, y)
    assert float(loss.detach()) == pytest.approx(-l2 + math.log(math.exp(l0) + 1 + math.exp(l2) + 1), rel=1e-5)
    loss.backward()
    grad = model.classifier.weight.grad
    assert grad[1].abs().sum() == 0 and grad[3].abs().sum() == 0  # absent classes' rows learn nothing
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0


def test_the_split_spec_names_the_classifier_rows_and_the_buffers():
    spec = SplitSpec.of(Toy())
    assert spec.class_axes == {"classifier.weight": 0, "classifier.bias": 0}
    assert spec.buffers == {"norm.running_mean", "norm.running_var"}


def test_label_split_aggregation_averages_each_classifier_row_over_the_holders_of_its_class():
    strategy, capacity, infos, _, family = _setup("heterofl", {"label_mask": True})
    labels = {0: (0, 1), 1: (1, 2), 2: (1,), 3: (1,)}
    infos = [ParticipantInfo(p.id, p.device, p.samples, labels[p.id]) for p in infos]
    weights = to_weights(family.build())
    tasks = strategy.plan(1, infos, capacity)[:2]  # two participants: classes {0, 1} and {1, 2}
    assert [t.objective.params["classes"] for t in tasks] == [[0, 1], [1, 2]]
    accumulator = strategy.new_accumulator(weights)
    for value, task in zip((1.0, 3.0), tasks):
        sub = {k: np.full_like(v, value) for k, v in extract(weights, strategy.index_map(task)).items()}
        strategy.fold(accumulator, task, Update(task.participant, sub, 10), weights)
    new, _ = strategy.combine(1, weights, accumulator)
    rows = new["classifier.bias"]
    assert rows[0] == 1.0 and rows[1] == 2.0 and rows[2] == 3.0  # own holder only; both holders; own holder only
    assert np.array_equal(rows[3:], weights["classifier.bias"][3:])  # nobody holds classes 3-9: unchanged
    kept = strategy.index_map(tasks[0])["classifier.weight"][1]
    assert np.all(new["classifier.weight"][0, kept] == 1.0) and np.all(new["classifier.weight"][2, kept] != 1.0)


def test_recipe_flags_reach_each_task_and_default_to_none():
    plain, capacity, infos, _, _ = _setup("fedrolex")
    assert plain.objective() is None and all(t.objective is None for t in plain.plan(1, infos, capacity))
    recipe, *_ = _setup("fed_dropout", {"static_bn": True, "scaler": True, "label_mask": True})
    infos = [ParticipantInfo(p.id, p.device, p.samples, (p.id,)) for p in infos]
    for task in recipe.plan(1, infos, capacity):
        assert task.objective.params == {"static_bn": True, "scaler_rate": task.rate, "classes": [task.participant]}
