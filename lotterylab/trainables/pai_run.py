"""The Ray Tune trainable of a PaI run: the first ``step`` prunes and trains the first epoch,
every later ``step`` trains one more epoch.

It only adapts Tune's life cycle to ``platform.pai.PaIRun``; the science stays there. The run's
state goes to the store after every step and comes back from there when the trial starts.
"""

from __future__ import annotations

import torch
from ray import tune

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.pai.run import PaIConfig, PaIRun
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.tensorboard import log_pai_epoch
from lotterylab.platform.store.tracking import tracked_store
from lotterylab.platform.store.trial_states import (
    read_state,
    run_folder,
    stopped_early,
    write_state,
)


def pai_config(spec: ExperimentSpec, experiment: str, config: dict) -> PaIConfig:
    return PaIConfig(
        experiment=experiment,
        dataset=config["dataset"],
        seed=config["seed"],
        method=config["method"],
        density=config["density"],
        rounds=config["rounds"],
        spec=spec,
        branch=config.get("branch", ""),
        parent_id=config.get("parent_id"),
    )


class PaIRunTrainable(tune.Trainable):
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
        torch.set_num_threads(max(1, int(spec.resources.cpu)))
        # rows reach its trackers too; writes land only while the driver holds the lease
        self.store = store = tracked_store(store_uri, spec, fence=fence)
        device = trial_device(spec.resources.gpu)
        run = config["run"]
        config = pai_config(spec, store.name, run)
        self.run = PaIRun(config, datasets[run["dataset"]], store, device)
        if "search" in self.config:  # analyses group a search's runs by these values
            store.write_json(f"runs/{self.run.id}/search.json", self.config["search"])
        self.folder = run_folder(self.run.id)
        self.last: dict | None = None
        stored = read_state(store, self.folder)
        if stored is not None:
            self.run.load_state_dict(stored.state)
            self.last = stored.result
        self.run.repair()  # what a lost disk or a careless hand removed comes back
        # a scheduler stopped this trial before the driver died: that decision stands
        self.stopped = stopped_early(store, self.folder)

    def step(self) -> dict:
        if self.stopped or self.run.done:  # resumed after it ended: its last results again
            return {**(self.last or {"run_id": self.run.id}), "done": True}
        mask_row = self.run.prune() if not self.run.pruned else None
        if self.run.done:  # scoring only (training.epochs: 0): epoch 0's row is the last
            row = self.run.initial_row
            log_pai_epoch(self.run, row, pruned_now=False)
        else:
            row = self.run.run_epoch()
            log_pai_epoch(self.run, row, pruned_now=mask_row is not None)
        result = {
            "run_id": self.run.id,
            "epoch": row["epoch"],
            "test_accuracy": row["test_accuracy"],
            "test_miou": row["test_miou"],
            "train_loss": row["train_loss"],
            "done": self.run.done,
        }
        if mask_row is not None:
            result["scoring_time_s"] = mask_row["scoring_time_s"]
        self.last = result
        write_state(self.store, self.folder, self.run.next_epoch, self.run.state_dict(), result)
        return result

    def cleanup(self) -> None:
        self.store.close()
