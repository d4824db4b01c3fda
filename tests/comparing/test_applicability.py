"""Which schemes apply to a model and a fleet, and the one line that says why a scheme cannot run."""

import dataclasses

import pytest

from msfusion_ray.app.applicability import Facts, applicable, facts_of
from msfusion_ray.app.compare_schemes import SCHEMES
from msfusion_ray.experiment.config_check import load_config
from msfusion_ray.paths import find_config

MIB = 2**20
# A model with width tags that every scheme but the depth and pipeline ones can train on this fleet.
WIDE = Facts(model="cnn", task="classification", width_tags=True, exits=False, layers=True, features=True,
             whole_bytes=8 * MIB, narrowest_bytes=MIB // 2, largest_cap_bytes=16 * MIB, compute_nodes=0,
             participants=8)


def why(facts, **changes):
    _, excluded = applicable(dataclasses.replace(facts, **changes), list(SCHEMES))
    return excluded


def test_every_scheme_with_what_it_needs():
    runnable, excluded = applicable(WIDE, list(SCHEMES))
    assert runnable == ["msfusion", "heterofl", "fedrolex", "fed_dropout", "small_fedavg", "fedavg", "fedbuff",
                        "fedasync"]
    assert excluded == {"Co-S2P": "the cnn model cannot be cut by depth with early exits",
                        "MP-SL": "the fleet has no compute nodes"}
    everything = dataclasses.replace(WIDE, exits=True, compute_nodes=2)
    assert applicable(everything, list(SCHEMES)) == (list(SCHEMES), {})


def test_fedavg_needs_a_device_that_holds_the_whole_model():
    assert why(WIDE, largest_cap_bytes=4 * MIB)["FedAvg"] == (
        "no device can hold the whole cnn model (training it needs 8.00 MiB; the largest memory cap is 4.00 MiB)")


def test_width_schemes_need_width_tags_and_the_narrowest_slice_somewhere():
    untagged = why(WIDE, width_tags=False)
    for name in ("MSfusion", "HeteroFL", "FedRolex", "Federated Dropout"):
        assert untagged[name] == "the cnn model has no width tags to split it by"
    assert untagged["small-model FedAvg"] == "the cnn model has no width tags to narrow it by"
    assert "FedBuff" not in untagged and "FedAvg" not in untagged  # the whole model still fits a device
    tiny = why(WIDE, largest_cap_bytes=MIB // 4)
    assert tiny["HeteroFL"] == ("no device can hold even the narrowest sub-model of cnn (needs 0.50 MiB; the largest "
                                "memory cap is 0.25 MiB)")
    assert tiny["FedBuff"] == tiny["FedAsync"] == tiny["HeteroFL"]
    assert why(WIDE, features=False)["MSfusion"] == ("the cnn model gives no penultimate features (forward_features) "
                                                     "for its contrastive loss")


def test_asynchronous_schemes_without_width_tags_need_the_whole_model():
    assert why(WIDE, width_tags=False, largest_cap_bytes=4 * MIB)["FedBuff"] == (
        "no device can hold the whole cnn model (training it needs 8.00 MiB; the largest memory cap is 4.00 MiB), "
        "and it has no width tags to train slices of")


def test_depth_and_pipeline_schemes():
    assert "Co-S2P" not in why(WIDE, exits=True)
    assert why(WIDE, layers=False, compute_nodes=3)["MP-SL"] == "the cnn model cannot be cut into layers"
    assert "MP-SL" not in why(WIDE, compute_nodes=3)


@pytest.mark.parametrize("name, runnable, reasons", [
    ("configs/fmnist/cnn_width.yaml", ["msfusion", "heterofl", "fedrolex", "fed_dropout", "small_fedavg", "fedbuff",
                                       "fedasync"], {"FedAvg", "Co-S2P", "MP-SL"}),
    ("configs/smoke/cos2p.yaml", ["msfusion", "heterofl", "fedrolex", "fed_dropout", "small_fedavg", "fedavg",
                                  "fedbuff", "fedasync", "cos2p"], {"MP-SL"}),  # the laptop holds the whole ViT
])
def test_facts_of_shipped_configs(name, runnable, reasons):
    facts = facts_of(load_config(find_config(name)))
    found, excluded = applicable(facts, list(SCHEMES))
    assert found == runnable and set(excluded) == reasons
