"""The FedAvg workload of benchmarks/flower.py through Flower's simulation (Message API: a ClientApp, a ServerApp
running the FedAvg strategy with central evaluation, `run_simulation` on its Ray backend). Run with the Python
of the Flower virtual environment that benchmarks/flower.py makes (never the project's):

    benchmarks/out/flower-venv/bin/python benchmarks/flower_app.py WORKLOAD_DIR OUT.json [--client-cpus 1]

It writes when each round's training began and ended (server side, and each client's train call), each central
evaluation's start, end and figures, and the run's start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

STARTED = time.time()  # noqa: E402  (before the imports: they are part of the start-up)

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

import flower_workload  # noqa: E402  (benchmarks/ is on the path of every Flower process)

WORKLOAD_ENV = "FLOWER_BENCH_WORKLOAD"  # the workload directory, in the environment of every Flower process


def workload() -> flower_workload.Workload:
    return flower_workload.cached(os.environ[WORKLOAD_ENV])


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    began = time.time()
    torch.set_num_threads(1)
    participant = int(context.node_config["partition-id"])
    round_idx = int(msg.content["config"]["server-round"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    keys = list(workload().initial)
    trained = workload().train(dict(zip(keys, weights)), participant, round_idx)
    metrics = MetricRecord({"num-examples": len(workload().shards[participant]), "train-start": began,
                            "train-end": time.time()})
    content = RecordDict({"arrays": ArrayRecord([trained[k] for k in keys]), "metrics": metrics})
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's training is handed out and when it has been aggregated."""

    def __init__(self, timing: dict, **kwargs):
        super().__init__(**kwargs)
        self.timing = timing

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        self.timing["rounds"].setdefault(str(server_round), {})["train_start"] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        replies = list(replies)
        entry = self.timing["rounds"].setdefault(str(server_round), {})
        entry["client_train"] = [[float(r.content["metrics"]["train-start"]), float(r.content["metrics"]["train-end"])]
                                 for r in replies if r.has_content()]
        result = super().aggregate_train(server_round, replies)
        entry["train_end"] = time.time()
        return result


server_app = ServerApp()
TIMING: dict = {"started": STARTED, "rounds": {}}


@server_app.main()
def main_server(grid: Grid, context: Context) -> None:
    settings = workload().settings
    keys = list(workload().initial)

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None  # the workload evaluates each round's model, not the initial one (Flower's default does)
        began = time.time()
        loss, accuracy = workload().evaluate(dict(zip(keys, arrays.to_numpy_ndarrays())))
        TIMING["rounds"].setdefault(str(server_round), {}).update(
            eval_start=began, eval_end=time.time(), loss=loss, accuracy=accuracy)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = TimedFedAvg(TIMING, fraction_train=1.0, fraction_evaluate=0.0,
                           min_available_nodes=settings["participants"])
    strategy.start(grid=grid, initial_arrays=ArrayRecord([workload().initial[k] for k in keys]),
                   num_rounds=settings["rounds"], train_config=ConfigRecord({}),
                   evaluate_fn=central_evaluation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload_dir")
    parser.add_argument("out")
    parser.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per client actor (Flower's num_cpus)")
    args = parser.parse_args()
    os.environ[WORKLOAD_ENV] = str(Path(args.workload_dir).resolve())
    settings = json.loads((Path(args.workload_dir) / "workload.json").read_text())
    # A Ray instance of its own (address "local": never one that another program started on this machine).
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=settings["participants"],
                   backend_config={"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
                                   "init_args": {"address": "local"}})
    TIMING["finished"] = time.time()
    Path(args.out).write_text(json.dumps(TIMING))


if __name__ == "__main__":
    main()
