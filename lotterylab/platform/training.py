"""SGD on a labelled image set, reproducible bit for bit from a seed on the CPU.

The batch order and the augmentations come from their own generator, so a training run depends
only on its start state, its mask and that seed: a resumed lineage replays a round exactly and a
resumed PaI run replays an epoch exactly. Masks stay enforced the same way for every model:
the pruned weights are zeroed again after each optimiser step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.spec import TrainingSpec

CROP_PADDING = 4
IGNORE_INDEX = 255  # segmentation pixels without a label


@dataclass(frozen=True)
class Evaluation:
    train_accuracy: float | None
    test_accuracy: float | None
    test_miou: float | None = None


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch) sample indices: epochs of fresh permutations, cut into batches."""
    if batch_size > n:
        raise ValueError(f"training.batch_size ({batch_size}) exceeds the {n} training images")
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])
    usable = perms[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)
    return usable[:steps]


def steps_per_epoch(data: ImageDataset, spec: TrainingSpec) -> int:
    n = data.size("train")
    if spec.batch_size > n:
        raise ValueError(f"training.batch_size ({spec.batch_size}) exceeds the {n} training images")
    return n // spec.batch_size


def make_optimizer(model: nn.Module, spec: TrainingSpec) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.optimizer == "nesterov",
        weight_decay=spec.weight_decay,
    )


def learning_rate(spec: TrainingSpec, progress: int) -> float:
    """The rate after ``progress`` steps (IMP) or epochs (PaI): one drop per passed milestone."""
    drops = sum(1 for milestone in spec.lr_drops if progress >= milestone)
    return spec.lr * spec.lr_drop_factor**drops


def crop_flip(
    images: torch.Tensor, generator: torch.Generator, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crops of the zero-padded images and random horizontal flips, one gather for all.

    Per-pixel ``labels`` (N, H, W) get the same crop and flip, padded with the ignore index.
    """
    n, _, h, w = images.shape
    device = images.device
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator).to(device)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator).to(device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    batch = torch.arange(n, device=device)[:, None, None]
    padded = F.pad(images, (CROP_PADDING,) * 4)
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    images = padded[batch[..., None], channel, rows[:, None, :, None], cols[:, None, None, :]]
    if labels is not None:
        padded_labels = F.pad(labels, (CROP_PADDING,) * 4, value=IGNORE_INDEX)
        labels = padded_labels[batch, rows[:, :, None], cols[:, None, :]]
    return images, labels


def logits_of(output: object) -> torch.Tensor:
    """The prediction of a forward pass: the tensor itself, or ``out`` of a segmentation dict."""
    return output["out"] if isinstance(output, Mapping) else output


class MaskEnforcer:
    """Zeroes the pruned weights after each optimiser step, so gradients, momentum and weight
    decay never revive one; the masks are cast to the weights' dtype and device once."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None):
        params = dict(model.named_parameters())
        names = list(masks or {})
        self.weights = [params[n] for n in names]
        self.masks = [masks[n].to(params[n].device, params[n].dtype) for n in names]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.weights:
            torch._foreach_mul_(self.weights, self.masks)


class BatchSource:
    """Training batches as the model expects them: on its device, images shaped (N, C, H, W)."""

    def __init__(self, data: ImageDataset, spec: TrainingSpec, device: torch.device):
        self.data, self.spec, self.device = data, spec, device

    def get(self, index: torch.Tensor, generator: torch.Generator):
        x = self.data.batch("train", index).to(self.device, non_blocking=True)
        x = x.view(len(index), *self.data.image_shape)
        y = self.data.train_y[index].to(self.device, non_blocking=True)
        if self.spec.augment == "crop_flip":
            x, labels = crop_flip(x, generator, y if y.dim() > 1 else None)
            y = y if labels is None else labels
        return x, y


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # only label maps carry an ignore value: 255 is a real class of a 1000-class image set
    ignore = IGNORE_INDEX if y.dim() > 1 else -100
    return F.cross_entropy(logits_of(model(x)), y, ignore_index=ignore)


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source: BatchSource,
    batches: torch.Tensor,
    generator: torch.Generator,
    masks: Mapping[str, torch.Tensor] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    start_step: int = 0,
    rate: Callable[[int], float] | None = None,
) -> float:
    """One optimiser step per row of ``batches``; returns the mean training loss."""
    model.train()
    enforce_masks = MaskEnforcer(model, masks)
    total = torch.zeros((), device=source.device)
    current_rate = None
    for offset, idx in enumerate(batches):
        step = start_step + offset
        if on_step is not None:
            on_step(step, model)
        if rate is not None and rate(step) != current_rate:
            current_rate = rate(step)
            for group in optimizer.param_groups:
                group["lr"] = current_rate
        x, y = source.get(idx, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model, x, y)
        loss.backward()
        optimizer.step()
        enforce_masks()
        total += loss.detach()
    return float(total) / max(1, len(batches))


def train(
    model: nn.Module,
    data: ImageDataset,
    spec: TrainingSpec,
    seed: int,
    start_step: int = 0,
    on_step: Callable[[int, nn.Module], None] | None = None,
    device: torch.device | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    stop_step: int | None = None,
) -> nn.Module:
    """Train from ``start_step`` to ``spec.steps``; ``on_step(t, model)`` runs before step t.

    ``stop_step`` ends the run early at exactly the state the full run passes through there.
    """
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    batches = batch_indices(data.size("train"), spec.batch_size, spec.steps - start_step, generator)
    if stop_step is not None:
        batches = batches[: stop_step - start_step]
    optimiser = make_optimizer(model, spec)
    rate = (lambda step: learning_rate(spec, step)) if spec.lr_drops else None
    source = BatchSource(data, spec, device)
    run_steps(model, optimiser, source, batches, generator, masks, on_step, start_step, rate)
    return model


def train_with_rewind_capture(
    model: nn.Module,
    data: ImageDataset,
    spec: TrainingSpec,
    seed: int,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Train from scratch and return the state at ``spec.rewind_step`` (θ(t_rewind))."""
    captured: dict[str, torch.Tensor] = {}

    def capture(step: int, current: nn.Module) -> None:
        if step == spec.rewind_step:
            captured.update(copy.deepcopy(current.state_dict()))

    train(model, data, spec, seed, on_step=capture, device=device)
    return captured


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageDataset,
    spec: TrainingSpec,
    seed: int,
    epoch: int,
    device: torch.device,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Epoch ``epoch`` (0-based) of a PaI training at its scheduled rate; returns the mean loss."""
    generator = torch.Generator().manual_seed(seed)
    batches = batch_indices(
        data.size("train"), spec.batch_size, steps_per_epoch(data, spec), generator
    )
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(spec, epoch)
    return run_steps(model, optimizer, BatchSource(data, spec, device), batches, generator, masks)


@torch.no_grad()
def predict(
    model: nn.Module, data: ImageDataset, split: str, batch_size: int, device: torch.device
):
    """(index, logits) per evaluation batch, batch norm in eval mode."""
    model.eval()
    n = data.size(split)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        x = data.batch(split, index).to(device).view(len(index), *data.image_shape)
        yield index, logits_of(model(x)).float()


def split_accuracy(
    model: nn.Module, data: ImageDataset, split: str, batch_size: int, device: torch.device
) -> float:
    labels = getattr(data, f"{split}_y")
    correct = sum(
        int((logits.argmax(1).cpu() == labels[index]).sum())
        for index, logits in predict(model, data, split, batch_size, device)
    )
    return correct / max(1, len(labels))


def confusion_matrix(
    model: nn.Module, data: ImageDataset, split: str, batch_size: int, device: torch.device
) -> torch.Tensor:
    """(K, K) pixel counts, rows true class, columns predicted; ignored pixels left out."""
    k = data.num_classes
    labels = getattr(data, f"{split}_y")
    confusion = torch.zeros(k * k, dtype=torch.int64)
    for index, logits in predict(model, data, split, batch_size, device):
        truth = labels[index]
        valid = truth != IGNORE_INDEX
        pairs = truth[valid] * k + logits.argmax(1).cpu()[valid]
        confusion += torch.bincount(pairs, minlength=k * k)
    return confusion.reshape(k, k)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes present in prediction or label of intersection over union."""
    intersection = confusion.diagonal().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else 0.0


def evaluate(
    model: nn.Module,
    data: ImageDataset,
    batch_size: int,
    device: torch.device | None = None,
    train_split: bool = True,
) -> Evaluation:
    """Accuracy (or mIoU for segmentation labels) with batch norm in eval mode."""
    device = device or torch.device("cpu")
    if data.test_y.dim() > 1:  # per-pixel labels
        confusion = confusion_matrix(model, data, "test", batch_size, device)
        return Evaluation(None, None, mean_iou(confusion))
    train_accuracy = None
    if train_split:
        train_accuracy = split_accuracy(model, data, "train", batch_size, device)
    return Evaluation(train_accuracy, split_accuracy(model, data, "test", batch_size, device))
