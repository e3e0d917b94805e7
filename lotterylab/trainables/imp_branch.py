"""The Ray Tune trainable of a lottery-ticket branch of an IMP lineage: the first ``step``
prepares its mask and start weights, the second trains and measures it.

It only adapts Tune's life cycle to ``platform.imp_branches.IMPBranch``; the science stays there.
"""

from __future__ import annotations

import os

import torch
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.imp.branches import IMPBranch, IMPBranchConfig
from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore

CHECKPOINT_FILE = "branch.pt"


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
        self, config: dict, spec_json: str, datasets: dict[str, ImageDataset], store_uri: str
    ) -> None:
        spec = ExperimentSpec.model_validate_json(spec_json)
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        store = ExperimentStore(store_uri)
        branch = config["branch"]
        self.branch = IMPBranch(
            imp_branch_config(spec, store.name, branch),
            datasets[branch["dataset"]],
            store,
            trial_device(spec.resources.gpu),
        )

    def step(self) -> dict:
        row = self.branch.step()
        result = {"branch_id": self.branch.id, "done": self.branch.done}
        if row is not None:
            result.update(
                test_accuracy=row["test_accuracy"],
                sparsity=row["sparsity"],
                rf_width_median=row["rf_width_median"],
            )
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.branch.state_dict(), os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
        self.branch.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


__all__ = ["CHECKPOINT_FILE", "IMPBranchTrainable", "imp_branch_config"]
