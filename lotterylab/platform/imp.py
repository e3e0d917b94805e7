"""An IMP lineage with its oneshot and random baselines, one round at a time.

Round 0 trains the dense net from initialisation and keeps θ(t_rewind); round n ≥ 1 trains
θ(t_rewind) ⊙ m(n) for T − t_rewind steps, where m(n) removed ``fraction`` of the weights
alive in round n − 1 by |θ(T)|. The baselines reuse the dense θ(T) and θ(t_rewind) of the
same lineage: in round n they keep exactly IMP's per-tensor counts, chosen by |dense θ(T)|
(oneshot) or uniformly at random, and are trained from θ(t_rewind) when asked to.

The procedure writes its result rows and masks to the store as each round ends, and its
whole state fits in ``state_dict()`` so a checkpointed lineage continues bit for bit.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from lotterylab.platform import masks as mk
from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.ids import lineage_id
from lotterylab.platform.metrics import rf_width_summary
from lotterylab.platform.models import FCN, FIRST_LAYER, apply_masks, build_model, prunable_names
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store import ExperimentStore
from lotterylab.platform.tables import ROUNDS_TABLE
from lotterylab.platform.training import evaluate, train, train_with_rewind_capture

IMP = "imp"


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from the lineage seed and a purpose, stable across Python processes."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class LineageConfig:
    experiment: str
    dataset: str
    seed: int
    spec: ExperimentSpec

    @property
    def identity(self) -> dict:
        """What changes the computation (hashed into the lineage id)."""
        return {
            "kind": self.spec.kind,
            "data": _data_identity(self.spec, self.dataset),
            "model": self.spec.model.model_dump(mode="json"),
            "training": self.spec.training.model_dump(mode="json"),
            "imp": self.spec.imp.model_dump(mode="json"),
        }

    @property
    def lineage_id(self) -> str:
        return lineage_id(
            self.spec.kind, self.spec.model.name, self.dataset, self.identity, self.seed
        )


def _data_identity(spec: ExperimentSpec, name: str) -> dict:
    data = spec.dataset(name).model_dump(mode="json")
    if data["type"] == "gaussian_clone":
        data["of"] = _data_identity(spec, data["of"])
    return data


class IMPLineage:
    """One seed × data set: the IMP lineage and the baselines that share its dense run."""

    def __init__(self, config: LineageConfig, data: ImageDataset, store: ExperimentStore):
        self.config, self.data, self.store = config, data, store
        self.spec = config.spec
        self.id = config.lineage_id
        self.methods = [IMP, *self.spec.imp.baselines]
        model = self._fresh_model()
        self.names = prunable_names(model, self.spec.imp.prune_biases, self.spec.imp.prune_output)
        params = dict(model.named_parameters())
        shapes = {n: params[n].shape for n in self.names}
        self.next_round = 0
        self.removal_rounds = {m: mk.new_removal_rounds(shapes) for m in self.methods}
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.dense_final: dict[str, torch.Tensor] | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.next_round > self.spec.imp.rounds

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

    # -- one round -----------------------------------------------------------------------
    def run_round(self) -> list[dict]:
        """Train, measure and prune for round ``next_round``; write rows and masks."""
        if self.done:
            raise RuntimeError(f"lineage {self.id} has finished all {self.spec.imp.rounds} rounds")
        n = self.next_round
        if n == 0:
            rows, imp_trained = self._dense_round()
        else:
            results = {method: self._sparse_round(method, n) for method in self.methods}
            rows = [row for row, _ in results.values()]
            imp_trained = results[IMP][1]
        if n < self.spec.imp.rounds:
            self._prune_imp(n, imp_trained)
        for row in rows:
            self.store.write_rows(ROUNDS_TABLE, self.id, f"round-{n:04d}-{row['method']}", [row])
        self._write_masks(n)
        self.next_round = n + 1
        return rows

    def _dense_round(self) -> tuple[list[dict], dict[str, torch.Tensor]]:
        start = time.perf_counter()
        model = self._fresh_model()
        self.rewind_state = train_with_rewind_capture(
            model,
            self.data.train_x,
            self.data.train_y,
            self.spec.training,
            self._train_seed(IMP, 0),
        )
        params = dict(model.named_parameters())
        self.dense_final = {n: params[n].detach().clone() for n in self.names}
        evaluation = evaluate(model, self.data, self.spec.training.eval_batch_size)
        masks = mk.masks_after_round(self.removal_rounds[IMP], -1)
        elapsed = time.perf_counter() - start
        # the dense net is every method's round 0: one training, a row per method
        return [self._row(m, 0, masks, evaluation, elapsed) for m in self.methods], self.dense_final

    def _sparse_round(self, method: str, n: int) -> tuple[dict, dict[str, torch.Tensor] | None]:
        """The row of one method in round n, and the trained prunable weights (if trained)."""
        start = time.perf_counter()
        if method != IMP:
            self._extend_baseline(method, n)
        masks = mk.masks_after_round(self.removal_rounds[method], n - 1)
        evaluation, trained = None, None
        if method == IMP or self.spec.imp.train_baselines:
            model = self._rewound_model(masks)
            train(
                model,
                self.data.train_x,
                self.data.train_y,
                self.spec.training,
                self._train_seed(method, n),
                start_step=self.spec.training.rewind_step,
            )
            params = dict(model.named_parameters())
            trained = {name: params[name].detach() for name in self.names}
            evaluation = evaluate(model, self.data, self.spec.training.eval_batch_size)
        return self._row(method, n, masks, evaluation, time.perf_counter() - start), trained

    def _prune_imp(self, n: int, weights: dict[str, torch.Tensor]) -> None:
        """Remove ``fraction`` of IMP's alive weights by |θ(T)| of round n."""
        alive = mk.masks_after_round(self.removal_rounds[IMP], n - 1)
        kept = mk.magnitude_prune(weights, alive, self.spec.imp.fraction, self.spec.imp.scope)
        for name, rr in self.removal_rounds[IMP].items():
            rr[alive[name] & ~kept[name]] = n

    def _extend_baseline(self, method: str, n: int) -> None:
        """Give the baseline of round n IMP's per-tensor alive counts of round n."""
        imp_counts = mk.alive_counts(mk.masks_after_round(self.removal_rounds[IMP], n - 1))
        scores = self._baseline_scores(method)
        rr = self.removal_rounds[method]
        for name in self.names:
            kept = mk.keep_top(
                scores[name], torch.ones_like(rr[name], dtype=torch.bool), imp_counts[name]
            )
            rr[name][~kept & (rr[name] == mk.ALIVE)] = n - 1

    def _baseline_scores(self, method: str) -> dict[str, torch.Tensor]:
        if method == "oneshot":
            return {name: w.abs() for name, w in self.dense_final.items()}
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, "random-mask"))
        return {
            name: torch.rand(w.shape, generator=generator) for name, w in self.dense_final.items()
        }

    # -- helpers -------------------------------------------------------------------------
    def _fresh_model(self) -> FCN:
        return build_model(
            self.spec.model,
            self.data.input_dim,
            self.data.num_classes,
            derived_seed(self.config.seed, "init"),
        )

    def _rewound_model(self, masks: dict[str, torch.Tensor]) -> FCN:
        model = self._fresh_model()
        model.load_state_dict(self.rewind_state)
        apply_masks(model, masks)
        return model

    def _train_seed(self, method: str, n: int) -> int:
        return derived_seed(self.config.seed, "batches", method, n)

    def _row(self, method, n, masks, evaluation, elapsed) -> dict:
        overall, per_layer = mk.sparsities(masks)
        rf = rf_width_summary(masks[FIRST_LAYER], self.data.image_shape)
        return {
            "experiment": self.config.experiment,
            "lineage_id": self.id,
            "kind": self.spec.kind,
            "method": method,
            "dataset": self.config.dataset,
            "model": self.spec.model.name,
            "seed": self.config.seed,
            "round": n,
            "sparsity": overall,
            "sparsity_first_layer": per_layer[FIRST_LAYER],
            "layer_sparsity": per_layer,
            "train_accuracy": None if evaluation is None else evaluation.train_accuracy,
            "test_accuracy": None if evaluation is None else evaluation.test_accuracy,
            "rf_width_median": rf.median_x,
            "rf_width_mean": rf.mean_x,
            "rf_width_y_median": rf.median_y,
            "rf_width_y_mean": rf.mean_y,
            "empty_units": rf.empty_units,
            "wall_time_s": elapsed,
        }

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
                "first_layer": FIRST_LAYER,
                "methods": self.methods,
                "last_round": n,
            },
        )
