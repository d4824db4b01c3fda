"""Evaluation shared out over hosts in chunks gives exactly the whole-split figures, with any number of hosts."""

import numpy as np
import torch

from msfusion_ray.config import DataConfig
from msfusion_ray.data import load_data
from msfusion_ray.models import build_family
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.training.evaluate import evaluate, recalibrate_batchnorm
from msfusion_ray.training.evaluate_shards import (combine_chunks, evaluate_chunks, label_elements, plan_chunks)


def test_chunks_are_whole_batches_in_order_shared_as_contiguous_runs():
    plan = plan_chunks({"test": 250, "val": 100}, batch_size=100, hosts=2)
    assert plan == [[("test", 0, 100), ("test", 100, 200)], [("test", 200, 250), ("val", 0, 100)]]
    assert plan_chunks({"test": 100}, batch_size=100, hosts=3) == [[], [], [("test", 0, 100)]]


def test_combined_chunks_equal_the_whole_split_exactly_whatever_the_hosts():
    data = load_data(DataConfig(train_samples=300, eval_samples=230), seed=0)
    family = build_family("cnn", data.shape, 0.25)
    torch.manual_seed(0)
    weights = to_weights(family.build())
    calibration = np.arange(0, 300, 3)
    model = family.build()
    load_weights(model, weights)
    recalibrate_batchnorm(model, data, data.train.subset(calibration), 64)
    whole = evaluate(model, data, data.test, 64)
    for hosts in (1, 2, 3, 5):
        plan = plan_chunks({"test": len(data.test)}, 64, hosts)
        chunks = [chunk for share in plan for chunk in share]
        parts = [part for share in plan for part in evaluate_chunks(family, data, weights, share, calibration, 64,
                                                                     64)]
        assert combine_chunks(chunks, parts, label_elements(data)) == {"test": whole}


def test_a_language_models_perplexity_comes_from_the_combined_loss():
    chunks = [("test", 0, 2), ("test", 2, 3)]
    parts = [{"loss": 2.0, "accuracy": 0.25, "perplexity": 7.39}, {"loss": 1.0, "accuracy": 0.5, "perplexity": 2.7}]
    combined = combine_chunks(chunks, parts, {"test": 4})  # 4 predicted tokens per window
    assert combined["test"]["loss"] == (2.0 * 8 + 1.0 * 4) / 12
    assert combined["test"]["accuracy"] == (2 + 2) / 12
    assert combined["test"]["perplexity"] == np.exp(combined["test"]["loss"])


def test_each_exits_perplexity_comes_from_its_own_combined_loss():
    chunks = [("test", 0, 2), ("test", 2, 3)]
    parts = [{"loss": 2.0, "perplexity": 7.39, "exit1_loss": 3.0, "exit1_perplexity": 20.1},
             {"loss": 1.0, "perplexity": 2.7, "exit1_loss": 4.0, "exit1_perplexity": 54.6}]
    combined = combine_chunks(chunks, parts, {"test": 4})["test"]
    assert combined["exit1_loss"] == (3.0 * 8 + 4.0 * 4) / 12
    assert combined["exit1_perplexity"] == np.exp(combined["exit1_loss"])
    assert combined["perplexity"] == np.exp(combined["loss"])
