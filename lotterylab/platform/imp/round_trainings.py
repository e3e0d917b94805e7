"""The trainings of IMP rounds, run one at a time or as one stacked computation.

Every training of a round starts at the same step: the dense round of every lineage from
initialisation (keeping θ(t_rewind)), a sparse round from θ(t_rewind) with each method's mask.
Trainings of FCNs of one shape therefore stack (``platform.batched``), whichever lineage, data
set or method they belong to; each keeps its own model, mask, data and batch seed, and ends as
training it alone would leave it, to float rounding.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.imp.batched import train_batched
from lotterylab.platform.spec import TrainingSpec
from lotterylab.platform.training import train, train_with_rewind_capture

__all__ = ["Training", "run_trainings"]


@dataclass
class Training:
    """One model to train from ``start_step`` to the end; ``keep_rewind`` captures θ(t_rewind)."""

    method: str
    model: nn.Module
    data: ImageDataset
    seed: int
    start_step: int
    masks: Mapping[str, torch.Tensor] | None = None
    keep_rewind: bool = False
    rewind_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    seconds: float = 0.0  # this training's share of the wall time


def _stack_key(training: Training) -> tuple:
    model = training.model
    return (
        tuple(p.shape for p in model.parameters()),
        training.start_step,
        training.keep_rewind,
    )


def run_trainings(
    trainings: Sequence[Training],
    spec: TrainingSpec,
    device: torch.device,
    stack: bool,
) -> None:
    """Train every model in place; with ``stack`` (models that declare ``stacks``), those of
    one shape and start step train as one computation."""
    if stack:
        groups: dict[tuple, list[Training]] = {}
        for training in trainings:
            groups.setdefault(_stack_key(training), []).append(training)
        batches = [g for g in groups.values() if len(g) > 1]
        single = [g[0] for g in groups.values() if len(g) == 1]
    else:
        batches, single = [], list(trainings)
    for batch in batches:
        _train_stacked(batch, spec, device)
    for training in single:
        _train_alone(training, spec, device)


def _train_alone(training: Training, spec: TrainingSpec, device: torch.device) -> None:
    start = time.perf_counter()
    if training.keep_rewind:
        state = train_with_rewind_capture(
            training.model, training.data, spec, training.seed, device
        )
        training.rewind_state = {k: v.cpu() for k, v in state.items()}
    else:
        train(
            training.model,
            training.data,
            spec,
            training.seed,
            start_step=training.start_step,
            device=device,
            masks=training.masks,
        )
    training.seconds = time.perf_counter() - start


def _train_stacked(batch: list[Training], spec: TrainingSpec, device: torch.device) -> None:
    start = time.perf_counter()
    captured = train_batched(
        [t.model for t in batch],
        [t.data for t in batch],
        spec,
        [t.seed for t in batch],
        start_step=batch[0].start_step,
        masks=[t.masks for t in batch],
        device=device,
        capture_step=spec.rewind_step if batch[0].keep_rewind else None,
    )
    shared = (time.perf_counter() - start) / len(batch)
    for k, training in enumerate(batch):
        training.seconds = shared
        if captured is not None:
            training.rewind_state = {name: v.cpu() for name, v in captured[k].items()}
