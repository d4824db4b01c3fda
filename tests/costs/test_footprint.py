"""The planned training footprint against the measured live-tensor peak of a real training step."""

import pytest
import torch

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.costs.footprint import plan_footprint
from msfusion_ray.devices.capacity import make_planner
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.training.local import make_optimizer
from msfusion_ray.training.losses import loss_of, task_loss


@pytest.mark.parametrize("name,shape,width,batch", [
    ("cnn", (1, 28, 28), 1.0, 32),
    ("resnet18", (1, 32, 32), 0.25, 16),
    ("resnet18", (3, 32, 32), 0.125, 8),
])
def test_planned_footprint_matches_measured_peak(name, shape, width, batch):
    family = build_family(name, DataShape(shape, 10), width)
    model = family.build()
    training = TrainingConfig(batch_size=batch, momentum=0.9)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    plan = plan_footprint(model, (x, y), loss_of("classification"), training.optimizer_state_copies())
    optimizer = make_optimizer(model, training, lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        task_loss("classification", model(x), y).backward()
        optimizer.step()

    resident = list(model.parameters()) + list(model.buffers()) + [x, y]
    _, cost = StepCostCache().run("k", step, resident)
    # The plan is an upper bound of what a real step holds at its peak, and a tight one.
    assert cost.peak_tensor_bytes <= plan.total <= 1.3 * cost.peak_tensor_bytes


def test_footprint_parts_follow_the_optimizer():
    family = build_family("cnn", DataShape((1, 28, 28), 10), 0.5)
    model = family.build()
    batch = family.example_batch(4)
    sgd = plan_footprint(model, batch, loss_of("classification"), TrainingConfig(momentum=0).optimizer_state_copies())
    adam = plan_footprint(model, batch, loss_of("classification"),
                          TrainingConfig(optimizer="adam").optimizer_state_copies())
    assert sgd.optimizer_state == 0
    assert adam.optimizer_state == 2 * adam.gradients
    assert adam.gradients == sum(p.numel() * 4 for p in model.parameters())
    assert adam.activations > 0 and adam.total > sgd.total


def test_the_input_batch_is_counted_once():
    """The first conv saves its input for backward; that storage is the batch, already counted as inputs."""
    from msfusion_ray.costs.footprint import saved_activations

    family = build_family("cnn", DataShape((1, 28, 28), 10), 0.5)
    model = family.build()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    saved = saved_activations(model, (x, y), loss_of("classification"))
    assert x.untyped_storage().data_ptr() not in saved
    plan = plan_footprint(model, (x, y), loss_of("classification"), 1)
    assert plan.inputs == x.numel() * 4 + y.numel() * 8


def test_footprints_are_measured_on_one_thread_and_are_the_same_bytes_as_on_two():
    """The planner measures on one thread (two waiting threads spin on cores the starting cluster holds) and gives
    the caller its threads back; the figures do not depend on the thread count."""
    family = build_family("cnn", DataShape((1, 28, 28), 10), 0.5)
    planner = make_planner(family, TrainingConfig(batch_size=8, momentum=0.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = family.build()
        on_two = plan_footprint(model, family.example_batch(8), loss_of("classification"), 0)
        assert planner.footprint(family.full_widths(), 8) == on_two
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
