"""Several IMP lineages of one spec advancing one round at a time as one unit of work.

Paper 1 trains many FCNs of one shape: seeds × data sets × methods × rounds. A group's
lineages move through their rounds in step, and each round's trainings (the dense nets in
round 0, every trained method of every lineage after) stack into one computation. Everything
else stays per lineage: ids, batches, masks, rows and artifacts are what the lineage would
write alone, and the group's state is the list of its lineages' states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

from lotterylab.platform.imp.lineage import IMPLineage
from lotterylab.platform.imp.round_trainings import run_trainings
from lotterylab.platform.models import model_entry
from lotterylab.platform.spec import ExperimentSpec

__all__ = ["LineageGroup", "group_lineages", "lineages_per_group", "stacks"]


# lineages per trial at most with ``batch_lineages: auto``: a GPU trial stacks many (one
# lineage leaves a GPU nearly idle), a CPU trial few (it gains little and holds them in memory)
AUTO_GROUP_LIMIT = {"cpu": 8, "gpu": 32}


def stacks(spec: ExperimentSpec) -> bool:
    """Whether the spec's lineages train as stacked computations."""
    return spec.run.batch_lineages != "off" and model_entry(spec.model).stacks


def lineages_per_group(spec: ExperimentSpec, lineages: int, slots: int, stacked: bool) -> int:
    """How many lineages share a trial: ``run.batch_lineages``; ``auto`` makes as few groups
    as still give each of the ``slots`` trials the cluster runs at once one (1 where nothing
    stacks)."""
    setting = spec.run.batch_lineages
    if setting == "off":
        return 1
    if setting == "auto":
        return math.ceil(lineages / max(1, slots)) if stacked else 1
    return setting


def group_lineages(
    members: Sequence[dict], shape_of: Callable[[dict], Hashable], size: int
) -> list[list[dict]]:
    """Members (grid points) split into groups of at most ``size`` that share a shape.

    Groups keep the grid's order and, within one shape, differ in size by at most one.
    """
    if size < 1:
        raise ValueError(f"group size is {size}; allowed: 1 or more")
    by_shape: dict[Hashable, list[dict]] = {}
    for member in members:
        by_shape.setdefault(shape_of(member), []).append(member)
    groups = []
    for same in by_shape.values():
        count = math.ceil(len(same) / size)
        base, extra = divmod(len(same), count)
        first = 0
        for g in range(count):
            end = first + base + (1 if g < extra else 0)
            groups.append(list(same[first:end]))
            first = end
    return groups


class LineageGroup:
    """K lineages of one spec, trained together a round at a time."""

    def __init__(self, lineages: Sequence[IMPLineage]):
        if not lineages:
            raise ValueError("a lineage group needs at least one lineage")
        ids = [lineage.id for lineage in lineages]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a lineage group holds each lineage once; got {ids}")
        first = lineages[0]
        for lineage in lineages[1:]:
            if lineage.spec.training != first.spec.training or lineage.device != first.device:
                raise ValueError(
                    f"lineage {lineage.id} trains with another training section or device "
                    f"than {first.id}; a group shares both"
                )
        self.lineages = list(lineages)

    @property
    def ids(self) -> list[str]:
        return [lineage.id for lineage in self.lineages]

    @property
    def done(self) -> bool:
        return all(lineage.done for lineage in self.lineages)

    def run_round(self) -> list[list[dict]]:
        """One round of every unfinished lineage; their rows, in the group's order."""
        active = [lineage for lineage in self.lineages if not lineage.done]
        if not active:
            raise RuntimeError(f"lineages {self.ids} have finished all their rounds")
        trainings = [lineage.round_trainings() for lineage in active]
        everything = [t for own in trainings for t in own]
        first = active[0]
        stack = all(lineage.stacks for lineage in active)
        run_trainings(everything, first.spec.training, first.device, stack)
        finished = {
            lineage.id: lineage.finish_round(own)
            for lineage, own in zip(active, trainings, strict=True)
        }
        return [finished.get(lineage.id, []) for lineage in self.lineages]

    def state_dict(self) -> dict:
        return {"lineages": [lineage.state_dict() for lineage in self.lineages]}

    def load_state_dict(self, state: dict) -> None:
        """The group's state, or (from a checkpoint of one lineage) that lineage's."""
        states = state["lineages"] if "lineages" in state else [state]
        stored = [s["lineage_id"] for s in states]
        if sorted(stored) != sorted(self.ids):
            raise ValueError(f"checkpoint holds lineages {stored}, not this group's {self.ids}")
        by_id = {s["lineage_id"]: s for s in states}
        for lineage in self.lineages:
            lineage.load_state_dict(by_id[lineage.id])
