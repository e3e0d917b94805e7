"""An IMP lineage with its sibling methods (oneshot, random, cavity-guided), one round at a time.

Round 0 trains the dense net from initialisation and keeps θ(t_rewind); round n ≥ 1 trains
θ(t_rewind) ⊙ m(n) for T − t_rewind steps, where m(n) removed ``fraction`` of the weights
alive in round n − 1 by |θ(T)|. The siblings share the lineage's dense θ(T) and θ(t_rewind):
at the end of every round each picks its next mask at IMP's per-tensor counts by its own
criterion (``imp_methods``), and is trained from θ(t_rewind) when it asks to be.

A round is split in two: ``round_trainings`` hands out the models the round trains and
``finish_round`` evaluates, measures and prunes once they are trained. The methods' trainings
of a round all start from θ(t_rewind) and run the same steps, so FCN trainings stack, with each
other and with those of other lineages (``lineage_group``, ``round_trainings``), each with its
own mask and batches, equal to training them one at a time to float rounding.

Each round also measures, for every method, the first-layer pre-activation kurtosis at
θ(t_rewind) ⊙ the mask that round trains; when the lineage ends, the cavity scores of every
round are grouped by the round in which each weight was eventually removed. The procedure
writes its result rows and artifacts to the store as each round ends, and its whole state fits
in ``state_dict()`` so a checkpointed lineage continues bit for bit.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.first_layer import (
    finite_or_none,
    first_layer_inputs,
    kurtosis_columns,
    rf_width_columns,
)
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.round_trainings import Training, run_trainings
from lotterylab.platform.imp.siblings import RoundContext, sibling
from lotterylab.platform.metrics import (
    cavity_by_removal_round,
    cavity_scores,
    preactivation_kurtosis,
    structure_columns,
)
from lotterylab.platform.models import (
    apply_masks,
    build_model,
    first_layer_name,
    has_dense_first_layer,
    model_entry,
    prunable_names,
)
from lotterylab.platform.pruning import keep_top
from lotterylab.platform.seeds import derived_seed
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.identity import lineage_identity
from lotterylab.platform.store.ids import lineage_id
from lotterylab.platform.store.manifest import (
    Manifest,
    missing_files,
    read_manifest,
    restore_parts,
    write_manifest,
)
from lotterylab.platform.store.tables import (
    CAVITY_TABLE,
    KURTOSIS_TABLE,
    ROUNDS_TABLE,
)
from lotterylab.platform.training import evaluate

IMP = "imp"
_TRAINED = re.compile(r"^trained/(?P<method>[^/]+)-round-(?P<round>\d{4})\.pt$")
_KURTOSIS = re.compile(r"^kurtosis/(?P<method>[^/]+)-round-(?P<round>\d{4})\.pt$")
_MASKS = re.compile(r"^masks/[^/]+\.pt$")

__all__ = ["IMP", "IMPLineage", "LineageConfig", "derived_seed", "trained_path"]


@dataclass(frozen=True)
class LineageConfig:
    experiment: str
    dataset: str
    seed: int
    spec: ExperimentSpec

    @property
    def identity(self) -> dict:
        """What changes the computation (hashed into the lineage id)."""
        return lineage_identity(self.spec, self.dataset)

    @property
    def lineage_id(self) -> str:
        return lineage_id(
            self.spec.kind, self.spec.model.name, self.dataset, self.identity, self.seed
        )


class IMPLineage:
    """One seed × data set: the IMP lineage and the siblings that share its dense run."""

    def __init__(
        self,
        config: LineageConfig,
        data: ImageDataset,
        store: ExperimentStore,
        device: torch.device | None = None,
    ):
        self.config, self.data, self.store = config, data, store
        self.spec = config.spec
        self.imp = self.spec.imp
        self.device = device or torch.device("cpu")
        self.id = config.lineage_id
        self.methods = [IMP, *self.imp.baselines]
        self.siblings = {name: sibling(name) for name in self.imp.baselines}
        model = self._fresh_model()
        self.shape_model = model  # the architecture, for the masks' paths and MACs
        self.names = prunable_names(model, self.imp.prune_biases, self.imp.prune_output)
        self.first_layer = first_layer_name(model)
        # kurtosis, cavity scores and RF widths read a dense first layer on pixels
        self.dense_first_layer = has_dense_first_layer(self.spec.model)
        params = dict(model.named_parameters())
        shapes = {n: params[n].shape for n in self.names}
        self.next_round = 0
        self.removal_rounds = {m: mk.new_removal_rounds(shapes) for m in self.methods}
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.dense_final: dict[str, torch.Tensor] | None = None
        self._measure_inputs: torch.Tensor | None = None
        self.manifest = Manifest(f"lineages/{self.id}")

    # -- state ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.next_round > self.imp.rounds

    def state_dict(self) -> dict:
        return {
            "lineage_id": self.id,
            "next_round": self.next_round,
            "removal_rounds": self.removal_rounds,
            "rewind_state": self.rewind_state,
            "dense_final": self.dense_final,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["lineage_id"] != self.id:
            raise ValueError(
                f"checkpoint belongs to lineage {state['lineage_id']!r}, not {self.id!r}"
            )
        self.next_round = int(state["next_round"])
        self.removal_rounds = state["removal_rounds"]
        self.rewind_state = state["rewind_state"]
        self.dense_final = state["dense_final"]
        self.manifest = read_manifest(self.store, self.manifest.folder) or self.manifest

    # -- repair --------------------------------------------------------------------------
    def repair(self) -> list[str]:
        """Rewrite what the manifest records as written but the store no longer has.

        Table parts come back from the rows the manifest kept; masks, the rewind point and
        kurtosis artifacts from the state; a round's trained weights by training that round
        again from θ(t_rewind) with its mask and batches (unstacked: equal to a stacked
        original to float rounding). Returns the files rewritten.
        """
        missing = missing_files(self.store, self.manifest)
        for rel in restore_parts(self.store, self.manifest, missing):
            self._rebuild_artifact(rel)
        return missing

    def _rebuild_artifact(self, rel: str) -> None:
        own = f"lineages/{self.id}/"
        name = rel.removeprefix(own)
        trained = _TRAINED.match(name)
        kurtosis = _KURTOSIS.match(name)
        if name == "rewind.pt" and self.rewind_state is not None:
            self.store.write_tensors(rel, self.rewind_state)
        elif name == "lineage.json" or _MASKS.match(name):
            self._write_masks(self.next_round - 1)
        elif kurtosis and kurtosis["method"] in self.methods:
            self._kurtosis(kurtosis["method"], int(kurtosis["round"]))
        elif trained and trained["method"] in self.methods:
            self._retrain(trained["method"], int(trained["round"]))
        else:
            raise StoreError(
                f"{self.store.url(rel)} is missing and lineage {self.id} cannot rebuild it; "
                f"delete the lineage's folders ({own}, tables/*/{self.id}/) to run it again"
            )

    def _retrain(self, method: str, n: int) -> None:
        training = self._training(method, n)
        run_trainings([training], self.spec.training, self.device, stack=False)
        self.store.write_tensors(trained_path(self.id, method, n), training.model.state_dict())

    # -- one round -----------------------------------------------------------------------
    def run_round(self) -> list[dict]:
        """Train, measure and prune for round ``next_round``; write rows and artifacts."""
        trainings = self.round_trainings()
        run_trainings(trainings, self.spec.training, self.device, self.stacks)
        return self.finish_round(trainings)

    @property
    def stacks(self) -> bool:
        """Whether this lineage's trainings may join one stacked computation."""
        return self.spec.run.batch_lineages != "off" and model_entry(self.spec.model).stacks

    def round_trainings(self) -> list[Training]:
        """The trainings round ``next_round`` needs: the dense net, or one per trained method.

        Every method's training of a sparse round starts from θ(t_rewind) and runs the same
        steps, so they stack with each other and with other lineages' (``run_trainings``).
        """
        if self.done:
            raise RuntimeError(f"lineage {self.id} has finished all {self.imp.rounds} rounds")
        n = self.next_round
        if n == 0:
            return [self._training(IMP, 0)]
        return [self._training(m, n) for m in self.methods if self._trains(m)]

    def _training(self, method: str, n: int) -> Training:
        """Round ``n``'s training of ``method``: the dense net in round 0 (keeping θ(t_rewind)),
        else θ(t_rewind) ⊙ the mask pruned at the end of round n − 1."""
        if n == 0:
            model = self._fresh_model().to(self.device)
            return Training(IMP, model, self.data, self._train_seed(IMP, 0), 0, keep_rewind=True)
        masks = mk.masks_after_round(self.removal_rounds[method], n - 1)
        return Training(
            method,
            self._rewound_model(masks),
            self.data,
            self._train_seed(method, n),
            self.spec.training.rewind_step,
            masks={k: v.to(self.device) for k, v in masks.items()},
        )

    def finish_round(self, trainings: list[Training]) -> list[dict]:
        """Evaluate the round's trained models, measure, prune; write rows and artifacts.

        What the round wrote goes to the lineage's manifest, last.
        """
        with self.store.journal() as journal:
            rows = self._finish_round(trainings)
        self.manifest.record(journal, self.next_round)
        write_manifest(self.store, self.manifest)
        return rows

    def _finish_round(self, trainings: list[Training]) -> list[dict]:
        n = self.next_round
        if n == 0:
            (dense,) = trainings
            start = time.perf_counter()
            self.rewind_state = dense.rewind_state
            params = dict(dense.model.named_parameters())
            self.dense_final = {k: params[k].detach().cpu().clone() for k in self.names}
            # analyses (cavity scores, kurtosis) of any round start from θ(t_rewind)
            self.store.write_tensors(f"lineages/{self.id}/rewind.pt", self.rewind_state)
            evaluation = self._evaluate(dense.model)
            elapsed = dense.seconds + time.perf_counter() - start
            # the dense net is every method's round 0: one training, a row per method
            results = {m: (evaluation, self.dense_final, elapsed) for m in self.methods}
        else:
            results = {m: (None, None, 0.0) for m in self.methods}
            for training in trainings:
                start = time.perf_counter()
                params = dict(training.model.named_parameters())
                trained = {k: params[k].detach().cpu() for k in self.names}
                evaluation = self._evaluate(training.model)
                seconds = training.seconds + time.perf_counter() - start
                results[training.method] = (evaluation, trained, seconds)
        for training in trainings:  # the ticket θ(T) ⊙ m, taken elsewhere by ``export``
            self.store.write_tensors(
                trained_path(self.id, training.method, n), training.model.state_dict()
            )
        rows = []
        for method, (evaluation, _, elapsed) in results.items():
            masks = mk.masks_after_round(self.removal_rounds[method], n - 1)
            rows.append(self._row(method, n, masks, evaluation, elapsed))
        if self.dense_first_layer and self.imp.measure_kurtosis:
            self._write_kurtosis(n)
        if n < self.imp.rounds:
            self._prune(n, {m: trained for m, (_, trained, _) in results.items()})
        for row in rows:
            self.store.write_rows(ROUNDS_TABLE, self.id, f"round-{n:04d}-{row['method']}", [row])
        self._write_masks(n)
        if n == self.imp.rounds and self.dense_first_layer and self.imp.measure_cavity:
            self._write_cavity()
        self._measure_inputs = None  # recomputed when needed: K lineages hold none between rounds
        self.next_round = n + 1
        return rows

    def _evaluate(self, model: nn.Module):
        return evaluate(model, self.data, self.spec.training.eval_batch_size, self.device)

    def _trains(self, method: str) -> bool:
        return method == IMP or self.siblings[method].trains(self.imp.train_baselines)

    def _prune(self, n: int, trained: dict[str, dict[str, torch.Tensor] | None]) -> None:
        """IMP removes ``fraction`` of its alive weights by |θ(T)|; siblings match its counts."""
        alive = mk.masks_after_round(self.removal_rounds[IMP], n - 1)
        kept = mk.magnitude_prune(trained[IMP], alive, self.imp.fraction, self.imp.scope)
        for name, rr in self.removal_rounds[IMP].items():
            rr[alive[name] & ~kept[name]] = n
        counts = mk.alive_counts(mk.masks_after_round(self.removal_rounds[IMP], n))
        rewind_weights = {name: self.rewind_state[name] for name in self.names}
        for method, strategy in self.siblings.items():
            own_alive = mk.masks_after_round(self.removal_rounds[method], n - 1)
            context = RoundContext(
                round=n,
                seed=self.config.seed,
                alive=own_alive,
                keep_counts=counts,
                trained=trained[method],
                dense_final=self.dense_final,
                rewind_weights=rewind_weights,
                first_layer=self.first_layer,
                first_layer_inputs=self._first_layer_inputs,
            )
            own_kept = keep_top(strategy.scores(context), own_alive, counts)
            for name, rr in self.removal_rounds[method].items():
                rr[own_alive[name] & ~own_kept[name]] = n

    # -- measurements --------------------------------------------------------------------
    def _first_layer_inputs(self) -> torch.Tensor:
        """What the first layer sees at θ(t_rewind): the input batch norm in eval mode.

        The rewind state fixes the batch-norm statistics, so the inputs are the same for every
        method and round of the lineage; they are computed once.
        """
        if self._measure_inputs is None:
            model = self._fresh_model()
            model.load_state_dict(self.rewind_state)
            self._measure_inputs = first_layer_inputs(
                model, self.data, self.imp.measure_samples, self.device
            )
        return self._measure_inputs

    def _rewind_first_layer(self, method: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = mk.mask_after_round(self.removal_rounds[method][self.first_layer], n - 1)
        weight = self.rewind_state[self.first_layer] * mask
        return weight.to(self.device), mask

    def _write_kurtosis(self, n: int) -> None:
        for method in self.methods:
            row = {**self._identity_columns(method), "round": n, **self._kurtosis(method, n)}
            self.store.write_rows(KURTOSIS_TABLE, self.id, f"round-{n:04d}-{method}", [row])

    def _kurtosis(self, method: str, n: int) -> dict:
        """Kurtosis at θ(t_rewind) ⊙ the mask round ``n`` trains: per-unit artifact, row columns."""
        count = min(self.data.size("train"), self.imp.measure_samples)
        labels = self.data.train_y[:count].to(self.device)
        weight, mask = self._rewind_first_layer(method, n)
        kurtosis = preactivation_kurtosis(
            weight, self._first_layer_inputs(), labels=labels, num_classes=self.data.num_classes
        )
        self.store.write_tensors(
            f"lineages/{self.id}/kurtosis/{method}-round-{n:04d}.pt",
            {"overall": kurtosis.overall, "per_class": kurtosis.per_class},
        )
        return {
            "sparsity_first_layer": 1.0 - float(mask.float().mean()),
            **kurtosis_columns(kurtosis),
        }

    def _write_cavity(self) -> None:
        """Fig. 5B/5C: N_W·cavity at every round, grouped by each weight's removal round."""
        for method in self.methods:
            fate = self.removal_rounds[method][self.first_layer]
            rows = []
            for n in range(self.imp.rounds + 1):
                weight, _ = self._rewind_first_layer(method, n)
                scores = cavity_scores(weight, self._first_layer_inputs()).cpu()
                grouped = cavity_by_removal_round(scores, fate, n)
                for group in grouped.groups:
                    rows.append(
                        {
                            **self._identity_columns(method),
                            "evaluated_at_round": n,
                            "removed_at_round": group["removed_at_round"],
                            "mean": finite_or_none(group["mean"]),
                            "count": group["count"],
                            "n_alive": grouped.n_alive,
                        }
                    )
            self.store.write_rows(CAVITY_TABLE, self.id, f"cavity-{method}", rows)

    # -- helpers -------------------------------------------------------------------------
    def _fresh_model(self) -> nn.Module:
        return build_model(
            self.spec.model,
            self.data.image_shape,
            self.data.num_classes,
            derived_seed(self.config.seed, "init"),
        )

    def _rewound_model(self, masks: dict[str, torch.Tensor]) -> nn.Module:
        model = self._fresh_model()
        model.load_state_dict(self.rewind_state)
        apply_masks(model, masks)
        return model.to(self.device)

    def _train_seed(self, method: str, n: int) -> int:
        return derived_seed(self.config.seed, "batches", method, n)

    def _identity_columns(self, method: str) -> dict:
        return {
            "experiment": self.config.experiment,
            "lineage_id": self.id,
            "kind": self.spec.kind,
            "method": method,
            "dataset": self.config.dataset,
            "model": self.spec.model.name,
            "seed": self.config.seed,
        }

    def _row(self, method, n, masks, evaluation, elapsed) -> dict:
        overall, per_layer = mk.sparsities(masks)
        first = self.first_layer or self.names[0]
        row = {
            **self._identity_columns(method),
            "round": n,
            "sparsity": overall,
            "sparsity_first_layer": per_layer[first],
            "layer_sparsity": per_layer,
            "train_accuracy": None if evaluation is None else evaluation.train_accuracy,
            "test_accuracy": None if evaluation is None else evaluation.test_accuracy,
            **rf_width_columns(
                masks[self.first_layer] if self.dense_first_layer else None, self.data.image_shape
            ),
            "wall_time_s": elapsed,
            **structure_columns(self.shape_model, masks, self.data.image_shape),
        }
        return row

    def _write_masks(self, n: int) -> None:
        for method in self.methods:
            self.store.write_tensors(
                f"lineages/{self.id}/masks/{method}.pt", self.removal_rounds[method]
            )
        self.store.write_json(
            f"lineages/{self.id}/lineage.json",
            {
                "lineage_id": self.id,
                "kind": self.spec.kind,
                "dataset": self.config.dataset,
                "model": self.spec.model.name,
                "seed": self.config.seed,
                "image_shape": list(self.data.image_shape),
                "first_layer": self.first_layer,
                "methods": self.methods,
                "last_round": n,
                "device": str(self.device),  # where the last round trained
            },
        )


def trained_path(lineage_id: str, method: str, n: int) -> str:
    """Where round ``n`` of a method keeps its trained state (round 0: the dense net, ``imp``)."""
    return f"lineages/{lineage_id}/trained/{method}-round-{n:04d}.pt"
