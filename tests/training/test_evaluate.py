import pytest
import torch

from msfusion_ray.config import DataConfig
from msfusion_ray.data import load_data
from msfusion_ray.models import build_family
from msfusion_ray.training.evaluate import evaluate, recalibrate_batchnorm


def test_batchnorm_recalibration_computes_the_statistics_of_the_calibration_data():
    data = load_data(DataConfig(train_samples=200, eval_samples=100), seed=0)
    model = build_family("cnn", data.shape, 0.25).build()
    first_bn = model.features[1]
    first_bn.running_mean.fill_(50.0)  # statistics that describe some other network
    first_bn.running_var.fill_(1e-4)
    assert recalibrate_batchnorm(model, data, data.train, batch_size=200)
    x, _ = data.to_batch(data.train.x, data.train.y)
    with torch.no_grad():
        conv = model.features[0](x)
    # BatchNorm's own reductions over a channels-last batch sum in another order than Tensor.mean and .var
    assert torch.allclose(first_bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(first_bn.running_var, conv.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3)
    assert first_bn.momentum == 0.1 and not model.training
    metrics = evaluate(model, data, data.test, batch_size=50)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


def test_models_without_batchnorm_are_left_alone():
    data = load_data(DataConfig(train_samples=50, eval_samples=20), seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    assert not recalibrate_batchnorm(model, data, data.train, batch_size=25)


def test_a_model_with_exits_is_judged_by_its_last_exit_and_reports_every_exit():
    data = load_data(DataConfig(train_samples=50, eval_samples=60, pad_to=32), seed=0)
    family = build_family("vit", data.shape, 1.0, {"d_model": 16, "n_heads": 2, "n_layers": 4, "patch": 8})
    torch.manual_seed(0)
    model = family.build()
    metrics = evaluate(model, data, data.test, batch_size=25)
    assert {f"exit{d}_accuracy" for d in (1, 2, 3, 4)} <= set(metrics)
    assert metrics["accuracy"] == metrics["exit4_accuracy"] and metrics["loss"] == metrics["exit4_loss"]
    x, y = data.to_batch(data.test.x, data.test.y)
    with torch.no_grad():
        shallow = model.forward_exits(x)[0]
    assert metrics["exit1_accuracy"] == pytest.approx(float((shallow.argmax(-1) == y).float().mean()))
    assert metrics["exit1_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(shallow, y)), rel=1e-5)
    cut = family.build(depth=2)  # a cut outputs its deepest exit
    assert set(k for k in evaluate(cut, data, data.test, 25) if k.startswith("exit")) == {
        "exit1_accuracy", "exit1_loss", "exit2_accuracy", "exit2_loss"}
