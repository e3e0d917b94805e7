"""Bounds a spec must keep before anything runs: grid size, storage, a trial's memory.

A spec that cannot run should fail in ``validate`` naming the field to change, not hours later
inside a trial with ``can't allocate memory``. The memory estimate is an order of magnitude
(tensors a trial holds, not allocator overheads): enough to refuse a ``hidden: [100000, ...]``
typo, not a tuning tool.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

MAX_GRID = 100_000  # trials × lineages a spec may ask for
# storage schemes whose writes a lease can fence (see lease.py); no scheme = a local path
LEASE_SCHEMES = ("file", "s3", "s3a", "gs", "gcs")
FLOAT_BYTES = 4


def grid_size(spec) -> tuple[int, str]:
    """Lineages or runs of the spec (every search configuration included) and how counted."""
    parts = [("data sets", len(spec.datasets)), ("seeds", len(spec.seeds))]
    if spec.pai is not None:
        parts += [
            ("methods", len(spec.pai.methods)),
            ("densities", len(spec.pai.densities)),
            ("rounds", len(spec.pai.rounds)),
        ]
    search = spec.search
    if search is not None:
        if search.algorithm == "grid":
            count = math.prod(len(d.grid) for d in search.space.values())
        else:
            count = search.num_samples
        parts.append(("search configurations", count))
    total = math.prod(n for _, n in parts)
    return total, " × ".join(f"{n} {what}" for what, n in parts)


def grid_problem(spec) -> str | None:
    total, counted = grid_size(spec)
    if total <= MAX_GRID:
        return None
    return (
        f"the grid has {counted} = {total} lineages or runs; the limit is {MAX_GRID}: "
        "list fewer seeds, data sets, methods, densities, rounds or configurations"
    )


def storage_problem(uri: str) -> str | None:
    """Why ``uri`` cannot hold an experiment (no lease can fence its writes), or None."""
    if "://" not in uri:
        return None
    scheme = uri.split("://", 1)[0].lower()
    if scheme in LEASE_SCHEMES:
        return None
    return f"{scheme}:// storage cannot hold a writer lease; allowed: a local path, " + ", ".join(
        f"{s}://" for s in LEASE_SCHEMES
    )


# -- memory -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialMemory:
    """Bytes a trial holds at once, by what holds them; ``data`` is shared by a node's trials."""

    parameters: int  # count of one model
    lineages: int  # lineages held by one trial
    trainings: int  # model trainings in memory at once (stacked lineages × methods)
    weights: int
    gradients: int
    optimizer: int
    kept: int  # initial and rewind weights, masks
    activations: int
    data: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.kept
            + self.activations
            + self.data
        )

    def driver(self, spec, available: int) -> str:
        """The spec field to change first: the stack if one lineage alone would fit, else the
        one behind the largest part of one lineage's training."""
        one = {
            "model": (self.weights + self.gradients + self.optimizer) // self.trainings
            + self.kept // self.lineages,
            "training.batch_size": self.activations // self.trainings,
            "datasets": self.data,
        }
        if sum(one.values()) <= available:
            return "run.batch_lineages"
        largest = max(one, key=one.get)
        if largest == "model":
            sized = [
                name
                for name, value in spec.model
                if name != "name" and not isinstance(value, bool)
                if isinstance(value, int) or (isinstance(value, list) and value)
            ]
            return ", ".join(f"model.{n}" for n in sized) or "model.name"
        if largest == "datasets":
            return "datasets (n_train, n_test)"
        return largest


def _measure_model(spec, shape: tuple[int, int, int], classes: int, batch: int):
    """Parameter count and activation values of one training batch, on the meta device."""
    from lotterylab.platform.models.registry import build_model

    with torch.device("meta"):
        model = build_model(spec.model, shape, classes, 0)
    parameters = sum(p.numel() for p in model.parameters())
    activations = 0

    def count(module, inputs, output):
        nonlocal activations
        outputs = output.values() if isinstance(output, dict) else [output]
        activations += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model.train()
        model(torch.empty((batch, *shape), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return model, parameters, activations


def estimate_trial_memory(spec) -> TrialMemory:
    """The memory one trial of ``spec`` holds at once, its data sets included (a bound).

    Parameters come from the registry's model built on the meta device, so a huge model costs
    nothing to count; every data set of the spec is counted with the largest model.
    """
    from lotterylab.platform.imp.group import AUTO_GROUP_LIMIT, stacks

    training = spec.training
    best = None
    data = 0
    for data_spec in spec.datasets:
        shape = spec.image_shape(data_spec.name) or (3, 32, 32)
        classes = spec.num_classes(data_spec.name) or 10
        model, parameters, activations = _measure_model(spec, shape, classes, training.batch_size)
        if best is None or (parameters, activations) > best[1:]:
            best = (model, parameters, activations)
        sized = spec.data_facts(data_spec.name)  # a clone has its source's size
        images = (spec.train_size(data_spec.name) or 0) + (getattr(sized, "n_test", 0) or 0)
        # sets read from files stay uint8 memory-maps; generated sets are float32 tensors
        per_value = 1 if getattr(sized, "root", None) else FLOAT_BYTES
        data += images * math.prod(shape) * per_value
    model, parameters, activations = best
    lineages_total = len(spec.datasets) * len(spec.seeds)
    setting = spec.run.batch_lineages
    if setting == "off" or spec.kind != "imp":
        lineages = 1
    elif setting == "auto":
        limit = AUTO_GROUP_LIMIT["gpu" if spec.resources.gpu > 0 else "cpu"]
        lineages = min(lineages_total, limit)
    else:
        lineages = min(lineages_total, setting)
    methods = 1 + len(spec.imp.baselines) if spec.kind == "imp" else 1
    stacked = spec.kind == "imp" and stacks(spec)
    trainings = lineages * methods if stacked else 1
    size = parameters * FLOAT_BYTES
    # initial and rewind weights per lineage, one int64 removal-round tensor per method
    kept = lineages * (2 * size + methods * parameters * 8)
    return TrialMemory(
        parameters=parameters,
        lineages=lineages,
        trainings=trainings,
        weights=trainings * size,
        gradients=trainings * size,
        optimizer=trainings * size if training.momentum > 0 else 0,
        kept=kept,
        activations=trainings * 2 * activations * FLOAT_BYTES,
        data=data,
    )


def node_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_problem(spec, available: int | None = None) -> str | None:
    """Why one trial of ``spec`` cannot fit a node of ``available`` bytes, or None."""
    available = node_memory() if available is None else available
    need = estimate_trial_memory(spec)
    if need.total <= available:
        return None
    field = need.driver(spec, available)
    return (
        f"  {field}: one trial needs about {_size(need.total)} of memory, more than the "
        f"{_size(available)} of the largest node: {need.parameters:,} parameters × "
        f"{need.trainings} training(s) at once ({need.lineages} lineage(s) per trial): "
        f"weights {_size(need.weights)}, gradients {_size(need.gradients)}, optimiser state "
        f"{_size(need.optimizer)}, initial/rewind weights and masks {_size(need.kept)}, "
        f"activations {_size(need.activations)}, data sets {_size(need.data)}; make {field} "
        "smaller"
    )


def runnable_problems(spec, on_this_machine: bool = True) -> list[str]:
    """What keeps a valid spec from running here: missing data paths, a trial too large.

    ``on_this_machine`` False (a cluster address was given) skips the memory check: the
    cluster's nodes are not known before connecting.
    """
    from lotterylab.platform.spec.safe_yaml import missing_data_paths

    problems = missing_data_paths(spec)
    memory = memory_problem(spec) if on_this_machine else None
    return problems + ([memory] if memory else [])


__all__ = [
    "runnable_problems",
    "LEASE_SCHEMES",
    "MAX_GRID",
    "TrialMemory",
    "estimate_trial_memory",
    "grid_problem",
    "grid_size",
    "memory_problem",
    "node_memory",
    "storage_problem",
]
