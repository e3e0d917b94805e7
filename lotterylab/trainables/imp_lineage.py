"""The Ray Tune trainable of IMP lineages: one ``step`` is one IMP round of each of them.

A trial runs a group of lineages (``platform.lineage_group``; one, unless ``run.batch_lineages``
groups them) given as ``config["lineages"]``, a list of ``{"dataset", "seed"}``. It only adapts
Tune's life cycle to ``LineageGroup``; the science stays in ``platform``.
"""

from __future__ import annotations

import os
import statistics

import torch
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.imp.group import LineageGroup
from lotterylab.platform.imp.lineage import IMP, IMPLineage, LineageConfig
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.tensorboard import log_imp_round
from lotterylab.platform.store.tracking import tracked_store

CHECKPOINT_FILE = "lineage.pt"
REPORTED = ("sparsity_first_layer", "test_accuracy", "rf_width_median")


def trial_members(config: dict) -> list[dict]:
    """The lineages of a trial config; a config of one ``dataset`` and ``seed`` is one."""
    if "lineages" in config:
        return list(config["lineages"])
    return [{"dataset": config["dataset"], "seed": config["seed"]}]


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
        self.store = store = tracked_store(store_uri, spec)  # rows reach its trackers too
        device = trial_device(spec.resources.gpu)
        lineages = []
        for member in trial_members(config):
            lineage_config = LineageConfig(store.name, member["dataset"], member["seed"], spec)
            lineages.append(IMPLineage(lineage_config, datasets[member["dataset"]], store, device))
            if "search" in config:  # analyses group a search's lineages by these values
                store.write_json(f"lineages/{lineages[-1].id}/search.json", config["search"])
        self.group = LineageGroup(lineages)

    def step(self) -> dict:
        """The group's round; metrics are the mean over its lineages' IMP rows."""
        rows = self.group.run_round()
        imp = []
        for lineage, own in zip(self.group.lineages, rows, strict=True):
            if own:
                log_imp_round(lineage, own)
                imp.append(next(row for row in own if row["method"] == IMP))
        result = {
            "group_size": len(self.group.ids),  # Tune's table: readable, unlike the id list
            "first_lineage": self.group.ids[0],
            "lineage_id": ",".join(self.group.ids),
            "imp_round": imp[0]["round"],
            "done": self.group.done,
        }
        for key in REPORTED:
            values = [row[key] for row in imp if row[key] is not None]
            result[key] = statistics.fmean(values) if values else None
        return result

    def cleanup(self) -> None:
        self.store.close()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.group.state_dict(), os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
        self.group.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


__all__ = ["CHECKPOINT_FILE", "IMPLineageTrainable", "trial_members"]
