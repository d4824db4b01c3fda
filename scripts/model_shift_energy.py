"""How much of the squared-delta energy of MSfusion's model shift BatchNorm's running statistics carry (issue 14):
three participants train ResNet-18 (width 0.25) slices at rate 0.5, overlap 0.5, for 5 SGD steps from one start
on Fashion-MNIST; the shift is measured over every entry and over the trainable parameters only.

    PYTHONPATH=. .venv/bin/python scripts/model_shift_energy.py
"""

import numpy as np
import torch

from msfusion_ray.config import DataConfig, StrategyConfig
from msfusion_ray.data import load_data
from msfusion_ray.models import build_family
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import extract, index_map, widths_of
from msfusion_ray.strategies import make_strategy
from msfusion_ray.strategies.base import ParticipantInfo
from msfusion_ray.training.losses import task_loss

STEPS, BATCH, SHARD = 5, 32, 200


def main() -> None:
    torch.set_num_threads(1)
    data = load_data(DataConfig(train_samples=3 * SHARD, eval_samples=100, pad_to=32), 0)
    family = build_family("resnet18", data.shape, 0.25)
    spec = family.spec
    strategy = make_strategy(StrategyConfig("msfusion", {"contrastive": False, "overlap": 0.5}), family, 0)
    torch.manual_seed(0)
    weights = to_weights(family.build())
    infos = [ParticipantInfo(i, "any", SHARD) for i in range(3)]
    selections = strategy.select(1, infos, {p.id: 0.5 for p in infos})
    accumulator = ScatterAccumulator(weights, track_dispersion=True)
    for p in infos:
        imap = index_map(spec, selections[p.id])
        model = family.build(widths_of(spec, selections[p.id]))
        received = extract(weights, imap)
        load_weights(model, received)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for step in range(STEPS):
            chosen = np.arange(BATCH) + p.id * SHARD + step * BATCH
            x, y = data.to_batch(data.train.x[chosen], data.train.y[chosen])
            optimizer.zero_grad()
            task_loss("classification", model(x), y).backward()
            optimizer.step()
        accumulator.add(to_weights(model), imap, weight=float(SHARD), reference=received)

    def energy(keys) -> float:  # noqa: ANN001
        shared = {k: accumulator._counts[k] >= 2 for k in keys}
        return sum(float((accumulator._squares[k][s] / accumulator._weights[k][s]).sum()) for k, s in shared.items())

    print(f"entries {sum(v.size for v in weights.values())}, of which BatchNorm running statistics "
          f"{sum(weights[k].size for k in spec.buffers)}")
    print(f"squared-delta energy on shared entries: {energy(weights):.1f}, of which running statistics "
          f"{energy(spec.buffers):.1f}")
    for name, keys in (("every entry", None), ("the trainable parameters", spec.trainable())):
        variance, total = accumulator.shared_dispersion(weights, keys)
        print(f"model shift over {name}: {variance / total:.3f}")


if __name__ == "__main__":
    main()
