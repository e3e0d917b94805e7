"""The Ray Tune trainable of IMP lineages: one ``step`` is one IMP round of each of them.

A trial runs a group of lineages (``platform.imp.group``; one, unless ``run.batch_lineages``
groups them) given as ``config["lineages"]``, a list of ``{"dataset", "seed"}``. It only adapts
Tune's life cycle to ``LineageGroup``; the science stays in ``platform``. Each lineage's state
goes to the store after every round and comes back from there when the trial starts (Tune keeps
no checkpoint), so a resumed or retried trial goes on from its last round, whatever its group.
"""

from __future__ import annotations

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
from lotterylab.platform.store.trial_states import (
    lineage_folder,
    read_state,
    stopped_early,
    write_state,
)

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
        fence: str | None = None,
    ) -> None:
        # a search trial runs the experiment's spec with its sampled values applied
        spec = ExperimentSpec.model_validate_json(spec_json).with_values(config.get("search"))
        # one thread per reserved CPU: the same thread count makes a resumed round bit-exact
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        # rows reach its trackers too; writes land only while the driver holds the lease
        self.store = store = tracked_store(store_uri, spec, fence=fence)
        device = trial_device(spec.resources.gpu)
        lineages = []
        for member in trial_members(config):
            lineage_config = LineageConfig(store.name, member["dataset"], member["seed"], spec)
            lineages.append(IMPLineage(lineage_config, datasets[member["dataset"]], store, device))
            if "search" in config:  # analyses group a search's lineages by these values
                store.write_json(f"lineages/{lineages[-1].id}/search.json", config["search"])
        self.group = LineageGroup(lineages)
        self.last: dict[str, dict] = {}  # lineage id -> its last IMP row's reported values
        for lineage in lineages:
            stored = read_state(store, lineage_folder(lineage.id))
            if stored is not None:
                lineage.load_state_dict(stored.state)
                if stored.result is not None:
                    self.last[lineage.id] = stored.result
        for lineage in lineages:  # what a lost disk or a careless hand removed comes back
            lineage.repair()
        # a scheduler stopped this trial before the driver died: that decision stands
        self.stopped = all(stopped_early(store, lineage_folder(i)) for i in self.group.ids)

    def step(self) -> dict:
        """The group's round; metrics are the mean over its lineages' last IMP rows."""
        if self.group.done or self.stopped:  # resumed after it ended: its last results again
            return self._result(done=True)
        rows = self.group.run_round()
        for lineage, own in zip(self.group.lineages, rows, strict=True):
            if own:
                log_imp_round(lineage, own)
                imp = next(row for row in own if row["method"] == IMP)
                self.last[lineage.id] = {k: imp[k] for k in ("round", *REPORTED)}
                folder = lineage_folder(lineage.id)
                state = lineage.state_dict()
                write_state(self.store, folder, lineage.next_round, state, self.last[lineage.id])
        return self._result(done=self.group.done)

    def _result(self, done: bool) -> dict:
        last = [self.last[i] for i in self.group.ids if i in self.last]
        rounds = [row["round"] for row in last]
        result = {
            "group_size": len(self.group.ids),  # Tune's table: readable, unlike the id list
            "first_lineage": self.group.ids[0],
            "lineage_id": ",".join(self.group.ids),
            "imp_round": max(rounds) if rounds else None,
            "done": done,
        }
        for key in REPORTED:
            values = [row[key] for row in last if row[key] is not None]
            result[key] = statistics.fmean(values) if values else None
        return result

    def cleanup(self) -> None:
        self.store.close()


__all__ = ["IMPLineageTrainable", "trial_members"]
