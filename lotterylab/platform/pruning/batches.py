"""Class-balanced scoring batches drawn from training data."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# batches a method scores on when handed an iterator or DataLoader: the spec's default
# ``pai.scoring_batches``
DEFAULT_SCORING_BATCHES = 2


def scoring_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    batches: int = DEFAULT_SCORING_BATCHES,
    batch_size: int = 128,
    seed: int = 0,
    image_shape: Sequence[int] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` batches of ``batch_size`` samples, classes as equal as the size allows.

    Each class gives batch_size // num_classes samples per batch, and the remainder goes to
    classes in turn, so over all batches no class is more than one sample ahead. No sample is
    drawn twice. ``x`` may be flat (N, D) with ``image_shape`` = (C, H, W), or images already.
    """
    for name, value, low in (
        ("num_classes", num_classes, 1),
        ("batches", batches, 1),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    if y.dim() != 1 or len(y) != len(x) or y.dtype != torch.int64:
        raise ValueError(
            f"y must be int64 labels of shape ({len(x)},); got {y.dtype} {tuple(y.shape)}"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got range [{int(y.min())}, {int(y.max())}]"
        )
    if image_shape is not None:
        shape = tuple(image_shape)
        if x.dim() != 2 or x.shape[1] != torch.Size(shape).numel():
            raise ValueError(
                f"x of shape {tuple(x.shape)} cannot be read as images of shape {shape}"
            )
        x = x.reshape(len(x), *shape)

    # counts[b, c]: samples of class c in batch b; the remainder rotates over classes
    base, extra = divmod(batch_size, num_classes)
    counts = (
        base
        + (
            (
                (torch.arange(num_classes)[None, :] - torch.arange(batches)[:, None] * extra)
                % num_classes
            )
            < extra
        ).long()
    )
    need = counts.sum(0)
    have = torch.bincount(y, minlength=num_classes)
    short = torch.nonzero(have < need).squeeze(1)
    if len(short):
        c = int(short[0])
        raise ValueError(
            f"class {c} has {int(have[c])} samples; {batches} batches of {batch_size} need "
            f"{int(need[c])} of each class"
        )

    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=generator)
    order = perm[torch.argsort(y[perm], stable=True)]  # grouped by class, random within
    start = torch.cumsum(have, 0) - have
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    rank = rank - start[y]  # position of each sample within its class
    ends = torch.cumsum(counts, 0)  # (batches, classes)
    chosen = rank < need[y]
    batch_of = torch.searchsorted(ends.T.contiguous()[y[chosen]], rank[chosen, None], right=True)
    idx = torch.nonzero(chosen).squeeze(1)
    batch_of = batch_of.squeeze(1)
    out = []
    for b in range(batches):
        members = idx[batch_of == b]
        members = members[torch.randperm(len(members), generator=generator)]
        out.append((x[members], y[members]))
    return out
