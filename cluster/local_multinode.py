"""Run an experiment on a multi-node Ray cluster emulated on this machine: one head and one worker node per device
class of the fleet, each worker node offering the custom resource `device:<profile>`, with
`runtime.device_resources` on so that every participant's host actor lands on its device class's node.

This exercises exactly the code path of a real cluster (`--address`, placement by custom resources, the object
store between raylets) without one. All nodes bind to 127.0.0.1.

    .venv/bin/python cluster/local_multinode.py configs/quickstart.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys

from msfusion_ray.runtime.cluster import apply_offline_env

apply_offline_env()

from ray.cluster_utils import Cluster  # noqa: E402  (after the loopback environment is set)

from msfusion_ray.app.launching import run_prepared  # noqa: E402
from msfusion_ray.errors import UserInputError  # noqa: E402
from msfusion_ray.experiment.config_check import load_config  # noqa: E402
from msfusion_ray.experiment.prepare import prepare, resolve_fleet  # noqa: E402

NODE_OBJECT_STORE = 256 * 1024**2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cpus-per-node", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        classes = sorted({p.device.name for p in resolve_fleet(config).participants})
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": NODE_OBJECT_STORE,
                                                            "include_dashboard": False})
    try:
        for device in classes:
            cluster.add_node(num_cpus=args.cpus_per_node, object_store_memory=NODE_OBJECT_STORE,
                             resources={f"device:{device}": 1000})
        print(f"cluster at {cluster.address}: head + {len(classes)} device nodes ({', '.join(classes)})")
        config = load_config(args.config, args.set + [f"runtime.address={cluster.address}",
                                                      "runtime.device_resources=true"])
        prepared = prepare(config)
        finished = run_prepared(prepared)
        run_dir, summary = finished.run_dir, finished.summary
        print(f"run {run_dir.name}: {summary['rounds_completed']} rounds, final accuracy {summary['final_accuracy']}")
        print(f"records: {run_dir}")
        return 0
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
