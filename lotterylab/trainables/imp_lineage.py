"""The Ray Tune trainable of an IMP lineage: one ``step`` is one IMP round.

It only adapts Tune's life cycle to ``platform.imp.IMPLineage``; the science stays there.
"""

from __future__ import annotations

import os

import torch
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.imp import IMP, IMPLineage, LineageConfig
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store import ExperimentStore
from lotterylab.platform.tensorboard_log import log_imp_round

CHECKPOINT_FILE = "lineage.pt"


class IMPLineageTrainable(tune.Trainable):
    def setup(
        self,
        config: dict,
        spec_json: str,
        datasets: dict[str, ImageDataset],
        store_uri: str,
    ) -> None:
        # a search trial runs the experiment's spec with its sampled values applied
        spec = ExperimentSpec.model_validate_json(spec_json).with_values(config.get("search"))
        # one thread per reserved CPU: the same thread count makes a resumed round bit-exact
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        store = ExperimentStore(store_uri)
        lineage_config = LineageConfig(store.name, config["dataset"], config["seed"], spec)
        self.lineage = IMPLineage(
            lineage_config, datasets[config["dataset"]], store, trial_device(spec.resources.gpu)
        )
        if "search" in config:  # analyses group a search's lineages by these values
            store.write_json(f"lineages/{self.lineage.id}/search.json", config["search"])

    def step(self) -> dict:
        rows = self.lineage.run_round()
        log_imp_round(self.lineage, rows)
        imp = next(row for row in rows if row["method"] == IMP)
        return {
            "lineage_id": self.lineage.id,
            "imp_round": imp["round"],
            "sparsity_first_layer": imp["sparsity_first_layer"],
            "test_accuracy": imp["test_accuracy"],
            "rf_width_median": imp["rf_width_median"],
            "done": self.lineage.done,
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.lineage.state_dict(), os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
        self.lineage.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
