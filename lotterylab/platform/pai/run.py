"""A pruning-at-initialisation run: prune the freshly initialised net once, then train it.

One run is (data set, method, density, scoring rounds, seed): the first call prunes with
``prune_at_init`` on class-balanced batches of training data, and each epoch after that is one
call of ``run_epoch``, so a trainable checkpoints after every epoch and a resumed run replays
the next epoch exactly. A run may also be a sanity-check branch of another run (the parent):
``reinit`` keeps the parent's mask on a fresh initialisation, ``shuffle`` permutes the mask
within each layer, ``invert`` keeps the lowest scores of the parent's method.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.first_layer import rf_width_columns
from lotterylab.platform.metrics import layer_widths, structure_columns
from lotterylab.platform.models import (
    apply_masks,
    build_model,
    first_layer_name,
    has_dense_first_layer,
)
from lotterylab.platform.pruning import prune_at_init, scoring_batches, shuffle_masks
from lotterylab.platform.seeds import derived_seed
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.identity import pai_identity
from lotterylab.platform.store.ids import short_hash
from lotterylab.platform.store.manifest import (
    Manifest,
    missing_files,
    read_manifest,
    restore_parts,
    write_manifest,
)
from lotterylab.platform.store.tables import PAI_EPOCHS_TABLE, PAI_MASKS_TABLE
from lotterylab.platform.training import evaluate, make_optimizer, train_epoch

BRANCHES = ("reinit", "shuffle", "invert")


@dataclass(frozen=True)
class PaIConfig:
    experiment: str
    dataset: str
    seed: int
    method: str
    density: float
    rounds: int
    spec: ExperimentSpec
    branch: str = ""
    parent_id: str | None = None

    def __post_init__(self) -> None:
        if self.branch and self.branch not in BRANCHES:
            raise ValueError(f"branch {self.branch!r} is not one of {BRANCHES}")
        if bool(self.branch) != (self.parent_id is not None):
            raise ValueError("a branch names its parent run, and only a branch has one")

    @property
    def identity(self) -> dict:
        """What changes the computation (hashed into the run id)."""
        return pai_identity(
            self.spec,
            self.dataset,
            self.method,
            self.density,
            self.rounds,
            self.branch,
            self.parent_id,
        )

    @property
    def run_id(self) -> str:
        suffix = f"-{self.branch}" if self.branch else ""
        return (
            f"pai-{self.spec.model.name}-{self.dataset}-{self.method}-d{self.density:.4g}"
            f"-T{self.rounds}-{short_hash(self.identity)}-s{self.seed}{suffix}"
        )


def pai_grid(spec: ExperimentSpec) -> list[dict]:
    """Every (data set, seed, method, density, rounds) of a PaI grid, densest first."""
    pai = spec.pai
    return [
        {"dataset": d, "seed": s, "method": m, "density": density, "rounds": r}
        for d, s, m, density in itertools.product(
            [d.name for d in spec.datasets],
            spec.seeds,
            pai.methods,
            sorted(pai.densities, reverse=True),
        )
        for r in pai.rounds_of(m)
    ]


class PaIRun:
    """Prune at initialisation, then train one epoch per call, writing a row per epoch."""

    def __init__(
        self,
        config: PaIConfig,
        data: ImageDataset,
        store: ExperimentStore,
        device: torch.device | None = None,
    ):
        self.config, self.data, self.store = config, data, store
        self.spec = config.spec
        self.device = device or torch.device("cpu")
        self.id = config.run_id
        self.epochs = self.spec.training.epochs
        self.next_epoch = 0
        self.masks: dict[str, torch.Tensor] | None = None
        self.initial_row: dict | None = None  # epoch 0's row, once prune() wrote it
        self.model = self._fresh_model().to(self.device)
        self.optimizer = make_optimizer(self.model, self.spec.training)
        self.manifest = Manifest(f"runs/{self.id}")

    @property
    def pruned(self) -> bool:
        return self.masks is not None

    @property
    def done(self) -> bool:
        return self.pruned and self.next_epoch >= self.epochs

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "run_id": self.id,
            "next_epoch": self.next_epoch,
            "masks": self.masks,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["run_id"] != self.id:
            raise ValueError(f"checkpoint belongs to run {state['run_id']!r}, not {self.id!r}")
        self.next_epoch = int(state["next_epoch"])
        self.masks = state["masks"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.manifest = read_manifest(self.store, self.manifest.folder) or self.manifest

    def _recorded(self, write):
        """Run ``write`` (a step) and add what it wrote to the run's manifest, last."""
        with self.store.journal() as journal:
            out = write()
        self.manifest.record(journal, self.next_epoch)
        write_manifest(self.store, self.manifest)
        return out

    def repair(self) -> list[str]:
        """Rewrite what the manifest records as written but the store no longer has: table
        parts from their recorded rows, artifacts from the state. Returns the files rewritten."""
        missing = missing_files(self.store, self.manifest)
        folder = self.manifest.folder
        for rel in restore_parts(self.store, self.manifest, missing):
            if rel == f"{folder}/masks.pt" and self.pruned:
                self.store.write_tensors(rel, self.masks)
            elif rel == f"{folder}/init.pt" and self.pruned:
                model = self._fresh_model()
                apply_masks(model, self.masks)
                self.store.write_tensors(rel, model.state_dict())
            elif rel == f"{folder}/run.json":
                self.store.write_json(rel, self._run_info())
            elif rel == f"{folder}/trained.pt" and self.done:
                self.store.write_tensors(rel, self.model.state_dict())
            else:
                raise StoreError(
                    f"{self.store.url(rel)} is missing and run {self.id} cannot rebuild it; "
                    f"delete the run's folders ({folder}/, tables/*/{self.id}/) to run it again"
                )
        return missing

    # -- the run -------------------------------------------------------------------------
    def prune(self) -> dict:
        """Choose the mask, install it, write it and the mask row; evaluate at epoch 0."""
        return self._recorded(self._prune)

    def _prune(self) -> dict:
        start = time.perf_counter()
        masks = self._choose_masks()
        scoring_time = time.perf_counter() - start
        self.masks = {name: mask.cpu() for name, mask in masks.items()}
        apply_masks(self.model, {k: v.to(self.device) for k, v in self.masks.items()})
        self.store.write_tensors(f"runs/{self.id}/masks.pt", self.masks)
        self.store.write_tensors(f"runs/{self.id}/init.pt", self.model.state_dict())
        self.store.write_json(f"runs/{self.id}/run.json", self._run_info())
        row = self._mask_row(scoring_time)
        self.store.write_rows(PAI_MASKS_TABLE, self.id, "masks", [row])
        self.initial_row = self._write_epoch_row(0, None, time.perf_counter() - start)
        return row

    def run_epoch(self) -> dict:
        """Train the next epoch and evaluate; returns the epoch's row."""
        return self._recorded(self._run_epoch)

    def _run_epoch(self) -> dict:
        if not self.pruned:
            raise RuntimeError(f"run {self.id} must be pruned before it trains")
        if self.done:
            raise RuntimeError(f"run {self.id} has finished all {self.epochs} epochs")
        start = time.perf_counter()
        epoch = self.next_epoch
        loss = train_epoch(
            self.model,
            self.optimizer,
            self.data,
            self.spec.training,
            derived_seed(self.config.seed, "batches", self.id, epoch),
            epoch,
            self.device,
            {k: v.to(self.device) for k, v in self.masks.items()},
        )
        self.next_epoch = epoch + 1
        if self.done:  # the trained model, taken elsewhere by ``export``
            self.store.write_tensors(f"runs/{self.id}/trained.pt", self.model.state_dict())
        return self._write_epoch_row(self.next_epoch, loss, time.perf_counter() - start)

    # -- helpers -------------------------------------------------------------------------
    def _fresh_model(self) -> nn.Module:
        purpose = "reinit" if self.config.branch == "reinit" else "init"
        return build_model(
            self.spec.model,
            self.data.image_shape,
            self.data.num_classes,
            derived_seed(self.config.seed, purpose),
        )

    def _choose_masks(self) -> dict[str, torch.Tensor]:
        branch = self.config.branch
        if branch in ("reinit", "shuffle"):
            parent = self.store.read_tensors(f"runs/{self.config.parent_id}/masks.pt")
            parent = {name: mask.bool() for name, mask in parent.items()}
            if branch == "shuffle":
                return shuffle_masks(parent, derived_seed(self.config.seed, "shuffle"))
            return parent
        pai = self.spec.pai
        # every method gets the batches: data-free ones read only the input shape from them
        data = [
            (x.to(self.device), y.to(self.device))
            for x, y in self._scoring_batches(pai.scoring_batches, pai.scoring_batch_size)
        ]
        return prune_at_init(
            self.model,
            self.config.method,
            self.config.density,
            data=data,
            rounds=self.config.rounds,
            schedule=pai.schedule,
            seed=derived_seed(self.config.seed, "scores", self.config.method),
            hparams=getattr(pai.hparams, self.config.method),
            invert=branch == "invert",
        )

    def _scoring_batches(self, batches: int, batch_size: int):
        seed = derived_seed(self.config.seed, "scoring-data")
        if self.data.train_y.dim() > 1:  # label maps: no image class to balance over
            order = torch.randperm(
                self.data.size("train"), generator=torch.Generator().manual_seed(seed)
            )
            index = order[: batches * batch_size].reshape(batches, batch_size)
            return [
                (
                    self.data.batch("train", i).view(batch_size, *self.data.image_shape),
                    self.data.train_y[i],
                )
                for i in index
            ]
        count = min(self.data.size("train"), batches * batch_size * 4)
        x = self.data.batch("train", torch.arange(count))
        return scoring_batches(
            x,
            self.data.train_y[:count],
            self.data.num_classes,
            batches=batches,
            batch_size=batch_size,
            seed=seed,
            image_shape=self.data.image_shape,
        )

    def _columns(self) -> dict:
        c = self.config
        return {
            "experiment": c.experiment,
            "run_id": self.id,
            "kind": "pai",
            "method": c.method,
            "density": c.density,
            "rounds": c.rounds,
            "dataset": c.dataset,
            "model": self.spec.model.name,
            "seed": c.seed,
            "branch": c.branch,
            "parent_id": c.parent_id,
        }

    def _run_info(self) -> dict:
        return {**self._columns(), "image_shape": list(self.data.image_shape)}

    def _mask_row(self, scoring_time: float) -> dict:
        widths = layer_widths(self.masks)
        row = {
            **self._columns(),
            **widths.columns(),
            **structure_columns(self.model, self.masks, self.data.image_shape),
            "scoring_time_s": scoring_time,
        }
        first = first_layer_name(self.model) if has_dense_first_layer(self.spec.model) else None
        rf = rf_width_columns(self.masks.get(first), self.data.image_shape)
        row.update(rf_width_median=rf["rf_width_median"], rf_width_mean=rf["rf_width_mean"])
        return row

    def _write_epoch_row(self, epoch: int, loss: float | None, elapsed: float) -> dict:
        evaluation = evaluate(
            self.model,
            self.data,
            self.spec.training.eval_batch_size,
            self.device,
            train_split=False,
        )
        row = {
            **self._columns(),
            "epoch": epoch,
            "train_loss": loss,
            "test_accuracy": evaluation.test_accuracy,
            "test_miou": evaluation.test_miou,
            "final": epoch == self.epochs,
            "wall_time_s": elapsed,
        }
        self.store.write_rows(PAI_EPOCHS_TABLE, self.id, f"epoch-{epoch:04d}", [row])
        return row
