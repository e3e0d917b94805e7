"""The Ray Tune trainable of a lottery-ticket branch of an IMP lineage: the first ``step``
prepares its mask and start weights, the second trains and measures it.

It only adapts Tune's life cycle to ``platform.imp.branches.IMPBranch``; the science stays
there. The branch's state goes to the store after every step and comes back from there.
"""

from __future__ import annotations

import torch
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.imp.branches import IMPBranch, IMPBranchConfig
from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.trial_states import lineage_folder, read_state, write_state


def imp_branch_config(spec: ExperimentSpec, experiment: str, config: dict) -> IMPBranchConfig:
    """The branch of a trial config ``{"dataset", "seed", "kind", "round", "rewind_step"}``."""
    return IMPBranchConfig(
        LineageConfig(experiment, config["dataset"], config["seed"], spec),
        config["kind"],
        config["round"],
        config.get("rewind_step"),
    )


class IMPBranchTrainable(tune.Trainable):
    def setup(
        self,
        config: dict,
        spec_json: str,
        datasets: dict[str, ImageDataset],
        store_uri: str,
        fence: str | None = None,
    ) -> None:
        spec = ExperimentSpec.model_validate_json(spec_json)
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        self.store = store = ExperimentStore(store_uri, fence=fence)
        branch = config["branch"]
        self.branch = IMPBranch(
            imp_branch_config(spec, store.name, branch),
            datasets[branch["dataset"]],
            store,
            trial_device(spec.resources.gpu),
        )
        self.last: dict | None = None
        stored = read_state(store, lineage_folder(self.branch.id))
        if stored is not None:
            self.branch.load_state_dict(stored.state)
            self.last = stored.result

    def step(self) -> dict:
        if self.branch.done:  # resumed after it ended: its last results again
            return {**(self.last or {"branch_id": self.branch.id}), "done": True}
        row = self.branch.step()
        result = {"branch_id": self.branch.id, "done": self.branch.done}
        if row is not None:
            result.update(
                test_accuracy=row["test_accuracy"],
                sparsity=row["sparsity"],
                rf_width_median=row["rf_width_median"],
            )
        self.last = result
        step = 2 if self.branch.done else 1  # prepared, then trained
        write_state(
            self.store, lineage_folder(self.branch.id), step, self.branch.state_dict(), result
        )
        return result


__all__ = ["IMPBranchTrainable", "imp_branch_config"]
