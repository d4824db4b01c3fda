"""Bring your own model, end to end on the shared embedded cluster: a model file outside the package (written here)
trains with FedAvg and with HeteroFL through the CLI and through `msfusion_ray.run`; the API returns the records
as DataFrames; a sweep through the API; tracking to MLflow and TensorBoard."""

import copy
import json

import numpy as np
import pytest
import yaml

import msfusion_ray
from msfusion_ray.cli import main
from msfusion_ray.errors import UserInputError
from msfusion_ray.records import read_round_rows

# A small network a user might write: width tags on its hidden layers, no constructor that takes widths, no
# forward_features (FedAvg and HeteroFL train on forward's logits).
NETS = '''
import torch
from torch import nn
from msfusion_ray.splitting.spec import width_axes


class Net(nn.Module):
    def __init__(self, channels, size, classes, hidden):
        super().__init__()
        self.conv = width_axes(nn.Conv2d(channels, 8, 3, padding=1), out="conv")
        self.norm = width_axes(nn.BatchNorm2d(8), out="conv")
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = width_axes(nn.Linear(8 * 16, hidden), inp=("conv", 16), out="fc")
        self.out = width_axes(nn.Linear(hidden, classes), inp="fc")

    def forward(self, x):
        h = self.pool(torch.relu(self.norm(self.conv(x)))).flatten(1)
        return self.out(torch.relu(self.fc(h)))


def make_net(shape, options):
    channels, size, _ = shape.input_shape
    return Net(channels, size, shape.num_outputs, options.get("hidden", 24))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = width_axes(nn.Linear(784, 16), out="fc")
        self.act = width_axes(nn.Tanh(), out="fc")
        self.out = width_axes(nn.Linear(16, 10), inp="fc")

    def forward(self, x):
        return self.out(self.act(self.fc(x.flatten(1))))


def make_unsupported(shape, options):
    return Unsupported()
'''


@pytest.fixture
def user_project(tmp_path, small_config_dict, monkeypatch):
    """A user's directory elsewhere: nets.py and a config naming it relative to the config file."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "nets.py").write_text(NETS)
    config = copy.deepcopy(small_config_dict)
    config["model"] = {"name": "./nets.py:make_net", "options": {"hidden": 24}}
    config["fleet"]["memory_scale"] = 1.0
    path = project / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # neither the package nor the project: the path is found relative to the config
    return path


@pytest.mark.parametrize("strategy", ["fedavg", "heterofl"])
def test_a_model_file_outside_the_package_trains_through_the_cli(ray_session, user_project, strategy, capsys):
    assert main(["run", str(user_project), "--set", f"strategy.name={strategy}", "--no-plots"]) == 0
    out = capsys.readouterr().out
    run_dir = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("records: "))
    run = yaml.safe_load(open(f"{run_dir}/config.yaml"))
    assert run["model"]["name"] == f"{user_project.parent / 'nets.py'}:make_net"  # anchored for every process
    rounds = read_round_rows(run_dir)
    assert rounds["participants_ok"].min() >= 1 and 0 <= rounds["test_accuracy"].iloc[-1] <= 1


@pytest.mark.parametrize("strategy", ["fedavg", "heterofl"])
def test_a_model_file_outside_the_package_trains_through_the_python_api(ray_session, user_project, strategy):
    run = msfusion_ray.run(user_project, strategy={"name": strategy}, progress=False)
    assert run.summary["status"] == "complete" and run.summary["rounds_completed"] == 2
    assert list(run.rounds["round"]) == [1, 2] and 0 <= run.summary["final_accuracy"] <= 1
    trained = run.participants[run.participants["status"] == "ok"]
    assert len(run.participants) == 2 * 3 and (trained["flops"] > 0).all()
    if strategy == "heterofl":  # each participant trains the widest prefix its memory holds, here every one of them
        assert (trained["rate"] <= 1).all() and trained["param_fraction"].between(0, 1).all()
    assert run.run_dir.is_dir() and run.config.strategy.name == strategy


def test_a_family_class_from_a_user_file_trains_like_a_built_in(ray_session, user_project):
    """A ModelFamily subclass named by its file path reaches the driver and the hosts (by value: the file is only
    where the config is), and is checked like any user model."""
    (user_project.parent / "families.py").write_text(
        "from msfusion_ray.models.cnn import CNNFamily\n\n\n"
        "class SlimCNN(CNNFamily):\n    units = {'conv1': 8, 'conv2': 16, 'fc1': 24}\n")
    model = {"name": "./families.py:SlimCNN", "options": {}}
    run = msfusion_ray.run(user_project, model=model, strategy={"name": "heterofl"}, progress=False)
    assert run.summary["status"] == "complete" and run.summary["rounds_completed"] == 2
    assert run.config.model.name == f"{user_project.parent / 'families.py'}:SlimCNN"
    trained = run.participants[run.participants["status"] == "ok"]
    assert len(trained) >= 1 and (trained["flops"] > 0).all()


def test_an_unsupported_tagged_layer_is_one_line_from_validate(user_project, capsys):
    code = main(["validate", str(user_project), "--set", "model.name=./nets.py:make_unsupported"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "model.name" in err and "act (Tanh): width tags are supported on" in err


def test_a_scheme_whose_loss_needs_features_asks_for_forward_features(user_project, capsys):
    assert main(["validate", str(user_project), "--set", "strategy.name=msfusion"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.name: msfusion trains with a loss on the penultimate features" in err


def test_validate_checks_a_random_sub_model_of_a_user_model(user_project, capsys):
    assert main(["validate", str(user_project), "--set", "strategy.name=heterofl"]) == 0
    assert "sub-models ok: 2 width groups" in capsys.readouterr().out


def test_overrides_and_bad_input_through_the_api(user_project):
    config = msfusion_ray.load(user_project, rounds=5, training__lr=0.01, strategy={"name": "heterofl"})
    assert (config.rounds, config.training.lr, config.strategy.name) == (5, 0.01, "heterofl")
    with pytest.raises(UserInputError, match="exp.yaml: training.learning_rate: unknown field"):
        msfusion_ray.load(user_project, training__learning_rate=0.1)


DATA = '''
import numpy as np


def load(data_dir, options):
    rng = np.random.default_rng(options.get("seed", 0))
    centres = rng.normal(size=(3, 6)) * 3
    def split(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(size=(n, 6))).astype(np.float32), y
    train_x, train_y = split(240)
    test_x, test_y = split(60)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def make_mlp(shape, options):
    from torch import nn
    from msfusion_ray.splitting.spec import width_axes
    return nn.Sequential(width_axes(nn.Linear(shape.input_shape[0], 32), out="h"), nn.ReLU(),
                         width_axes(nn.Linear(32, shape.num_outputs), inp="h"))
'''


def test_run_takes_a_config_or_a_run_directory_to_resume(tmp_path):
    with pytest.raises(UserInputError, match="give a config or resume=RUN_DIR$"):
        msfusion_ray.run()
    with pytest.raises(UserInputError, match="not both"):
        msfusion_ray.run("quickstart", resume=tmp_path)
    with pytest.raises(UserInputError, match="not a run directory"):
        msfusion_ray.run(resume=tmp_path, rounds=5)


def test_a_data_set_and_a_model_from_one_user_file_through_a_sweep(ray_session, tmp_path, small_config_dict,
                                                                   monkeypatch):
    (tmp_path / "blobs.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    base = copy.deepcopy(small_config_dict)
    base["data"] = {"dataset": "blobs.py:load", "partition": "iid", "options": {"seed": 1}}
    base["model"] = {"name": "blobs.py:make_mlp"}
    base["fleet"]["memory_scale"] = 1.0
    result = msfusion_ray.sweep({"name": "blobs", "base": base, "grid": {"strategy.name": ["fedavg", "fedrolex"]},
                                 "output_dir": str(tmp_path / "sweeps")}, progress=False)
    assert list(result.cells["status"]) == ["complete", "complete"]
    assert set(result.rounds["cell"]) == set(result.cells["cell"]) and len(result.rounds) == 4
    assert result.rounds.groupby("cell")["test_accuracy"].last().min() > 1 / 3  # better than chance on blobs
    assert msfusion_ray.sweep is msfusion_ray.api.sweep  # the function; sweeps' modules live in msfusion_ray.app


def test_tensorboard_tracking_writes_each_round(ray_session, small_config_dict):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = msfusion_ray.run(small_config_dict, runtime={"tracking": "tensorboard"}, progress=False)
    events = EventAccumulator(str(run.run_dir / "tensorboard")).Reload()
    accuracy = events.Scalars("test_accuracy")
    assert [e.step for e in accuracy] == [1, 2]
    assert np.isclose(accuracy[-1].value, run.rounds["test_accuracy"].iloc[-1])
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: fedavg" in config_text and "batch_size: 16" in config_text
    assert json.loads((run.run_dir / "tracking.json").read_text())["rounds"] == 2


def test_mlflow_tracking_logs_each_round_and_the_config(ray_session, small_config_dict, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = msfusion_ray.run(small_config_dict, runtime={"tracking": "mlflow", "tracking_uri": uri}, progress=False)
    client = MlflowClient(tracking_uri=uri)
    tracked = client.search_runs([client.get_experiment_by_name("test").experiment_id])[0]
    assert tracked.info.run_name == run.run_id and tracked.info.status == "FINISHED"
    assert tracked.data.params["strategy.name"] == "fedavg" and tracked.data.params["training.batch_size"] == "16"
    history = client.get_metric_history(tracked.info.run_id, "flops_total")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == [float(v) for v in run.rounds["flops_total"]]


def test_tracking_is_off_by_default_and_a_missing_tracker_is_one_line(small_config_dict, monkeypatch):
    import importlib.util

    from msfusion_ray.experiment.config_check import config_from_dict
    from msfusion_ray.experiment.prepare import prepare

    assert config_from_dict(small_config_dict).runtime.tracking is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserInputError, match="runtime.tracking: mlflow is not installed"):
        prepare(config_from_dict(small_config_dict, ["runtime.tracking=mlflow"]))
