"""The arithmetic of a training run: steps, epochs, where a resumed run starts, grid shapes."""

import pytest
import torch

from workers.training import TrainingPlan, epoch_order, grid_shape


def test_plan_with_gradient_accumulation_spanning_epochs() -> None:
    # 10 images in batches of 4: 3 batches an epoch (the last one of 2); 2 batches per optimizer step.
    plan = TrainingPlan(
        num_images=10, train_batch_size=4, gradient_accumulation_steps=2, num_epochs=3, max_train_steps=None
    )
    assert plan.batches_per_epoch == 3 and plan.total_steps == 4 and plan.epochs == 3
    assert plan.position(0) == (0, 0)
    assert plan.position(1) == (0, 2)  # step 2 starts with the last batch of epoch 0
    assert plan.position(3) == (2, 0)


def test_max_train_steps_overrides_epochs() -> None:
    plan = TrainingPlan(
        num_images=10, train_batch_size=4, gradient_accumulation_steps=1, num_epochs=1, max_train_steps=7
    )
    assert plan.total_steps == 7 and plan.epochs == 3


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    order, flips = epoch_order(seed=3, epoch=1, num_images=50)
    again, flips_again = epoch_order(seed=3, epoch=1, num_images=50)
    assert torch.equal(order, again) and torch.equal(flips, flips_again)
    assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(order, epoch_order(seed=3, epoch=2, num_images=50)[0])
    assert not torch.equal(order, epoch_order(seed=4, epoch=1, num_images=50)[0])


@pytest.mark.parametrize(
    ("count", "shape"), [(16, (4, 4)), (4, (2, 2)), (6, (2, 3)), (7, (1, 7)), (1, (1, 1))]
)
def test_grid_shape(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape
