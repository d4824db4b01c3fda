"""Calibration for issue 14's task where width matters: the CNN trained centrally (one thread, SGD lr 0.05,
momentum 0.9, weight decay 5e-4, batch 32) at several uniform rates of a global width, for a few epochs on a
seeded subset of Fashion-MNIST; test accuracy on 2000 test images.

    PYTHONPATH=. .venv/bin/python scripts/central_width.py cnn 1.0 20000 3 1.0,0.5,0.25,0.125,0.0625
    (arguments: model, global width, training images, epochs, rates)
"""
import sys
import time

import numpy as np
import torch

from msfusion_ray.config import DataConfig
from msfusion_ray.data import load_data
from msfusion_ray.models import build_family
from msfusion_ray.splitting.index_map import prefix_selection, widths_of
from msfusion_ray.training.evaluate import evaluate
from msfusion_ray.training.losses import task_loss

torch.set_num_threads(1)
model_name, width = sys.argv[1], float(sys.argv[2])
n_train, epochs = int(sys.argv[3]), int(sys.argv[4])
rates = [float(r) for r in sys.argv[5].split(",")]
pad = 32 if model_name == "resnet18" else None
data = load_data(DataConfig(train_samples=n_train, eval_samples=2000, pad_to=pad), 0)
family = build_family(model_name, data.shape, width)
for rate in rates:
    torch.manual_seed(0)
    widths = widths_of(family.spec, prefix_selection(family.spec, rate))
    model = family.build(widths)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        order = rng.permutation(len(data.train))
        for s in range(0, len(order), 32):
            idx = order[s:s+32]
            x, y = data.to_batch(data.train.x[idx], data.train.y[idx])
            opt.zero_grad(); task_loss("classification", model(x), y).backward(); opt.step()
    acc = evaluate(model, data, data.test, 500)["accuracy"]
    params = sum(p.numel() for p in model.parameters())
    print(f"{model_name} w{width} rate {rate:.4f} widths {widths} params {params} acc {acc:.4f} time {time.time()-t0:.1f}s", flush=True)
