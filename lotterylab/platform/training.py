"""Plain SGD on in-memory tensors, reproducible bit for bit from a seed on the CPU.

The batch order comes from its own generator, so a training run depends only on its start
state, its mask and that seed: a resumed lineage replays a round exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.metrics import accuracy
from lotterylab.platform.spec import TrainingSpec


@dataclass(frozen=True)
class Evaluation:
    train_accuracy: float
    test_accuracy: float


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch) sample indices: epochs of fresh permutations, cut into batches."""
    per_epoch = max(1, n // batch_size)
    epochs = -(-steps // per_epoch)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])
    usable = perms[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)
    return usable[:steps]


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: TrainingSpec,
    seed: int,
    start_step: int = 0,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train from ``start_step`` to ``spec.steps``; ``on_step(t, model)`` runs before step t."""
    generator = torch.Generator().manual_seed(seed)
    batches = batch_indices(len(x), spec.batch_size, spec.steps - start_step, generator)
    optimiser = torch.optim.SGD(model.parameters(), lr=spec.lr)
    model.train()
    for offset, idx in enumerate(batches):
        if on_step is not None:
            on_step(start_step + offset, model)
        optimiser.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimiser.step()
    return model


def train_with_rewind_capture(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainingSpec, seed: int
) -> dict[str, torch.Tensor]:
    """Train from scratch and return the state at ``spec.rewind_step`` (θ(t_rewind))."""
    captured: dict[str, torch.Tensor] = {}

    def capture(step: int, current: nn.Module) -> None:
        if step == spec.rewind_step:
            captured.update(copy.deepcopy(current.state_dict()))

    train(model, x, y, spec, seed, on_step=capture)
    return captured


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in torch.split(x, batch_size)])


def evaluate(model: nn.Module, data: ImageDataset, batch_size: int) -> Evaluation:
    """Accuracy on the train and test splits, batch norm in eval mode."""
    return Evaluation(
        train_accuracy=accuracy(predict(model, data.train_x, batch_size), data.train_y),
        test_accuracy=accuracy(predict(model, data.test_x, batch_size), data.test_y),
    )
