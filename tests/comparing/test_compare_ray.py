"""A real comparison on the shared cluster, through the Python API: two schemes, no tuning runs, two seeds."""

import copy

import yaml

import msfusion_ray
from tests.conftest import SMALL_CONFIG


def test_compare_runs_each_scheme_on_the_seeds_and_returns_the_decision(ray_session, tmp_path):
    data = copy.deepcopy(SMALL_CONFIG)
    data["runtime"]["hosts"] = 1
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    choice = msfusion_ray.compare(str(path), schemes=["fedavg", "small_fedavg"], seeds=2, budget=1, progress=False,
                                  output_dir=str(tmp_path / "out"))
    frame = choice.decision
    assert list(frame["key"][:2]) == ["final", "time_to_target"] and frame["winner"].notna().all()
    assert set(frame.loc[frame["key"] == "final", ["winner", "runner_up"]].iloc[0]) == {"FedAvg",
                                                                                       "small-model FedAvg"}
    assert choice.recommendation.startswith("Recommendation: ")
    assert set(choice.statistics["scheme"]) == {"FedAvg", "small-model FedAvg"}
    finals = choice.statistics[choice.statistics["objective"] == "final"]
    assert all(len(v) == 2 for v in finals["values"])  # both seeds of both schemes
    html = (choice.directory / "report" / "report.html").read_text()
    assert html.index(choice.recommendation.split(".")[0]) < html.index("<figure")  # the first screen answers
    assert (choice.directory / "decision.md").read_text().startswith("# Which scheme for this fleet: test-compare")
