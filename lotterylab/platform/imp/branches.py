"""Lottery-ticket branches of an IMP lineage, as OpenLTH defines them: the controls of one ticket.

A branch takes the ticket of round N (the IMP mask that round trains) from the lineage's stored
trunk and trains one variant of it to the lineage's step count T:

- ``reinit``: the round-N mask on a fresh initialisation, trained from step t_rewind;
- ``random_prune``: a uniformly random mask with round N's per-tensor counts, from θ(t_rewind);
- ``rewind``: the round-N mask from θ(S) of the dense run, trained from step S (S = 0 is
  Frankle & Carbin's original ticket). The store keeps θ(t_rewind) only, so another θ(S) is
  recomputed by replaying the lineage's dense training to step S from its seed: the same start
  and batches as the trunk's round 0, bit for bit on the CPU (to float rounding where the trunk
  stacked its trainings with other lineages').

Every branch trains with the batches of the ticket's own round N, so the ticket and its branches
differ only in what the branch changes: a ``rewind`` branch at S = t_rewind is the ticket. Rows go
to the ``imp_branches`` table with the columns of ``rounds`` (measured by ``IMPLineage``'s own
code), the branch, the parent lineage and, on the FCN, the first-layer kurtosis at the branch's
start weights. A branch is two steps (prepare its start weights and mask, then train), and its
whole state fits in ``state_dict()``, so a killed branch continues from its last step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.lineage import IMP, IMPLineage, LineageConfig, trained_path
from lotterylab.platform.imp.round_trainings import Training, run_trainings
from lotterylab.platform.models import build_model
from lotterylab.platform.pruning import keep_top
from lotterylab.platform.seeds import derived_seed
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.tables import IMP_BRANCHES_TABLE
from lotterylab.platform.training import train

BRANCH_KINDS = ("reinit", "random_prune", "rewind")

__all__ = ["BRANCH_KINDS", "IMPBranch", "IMPBranchConfig"]


@dataclass(frozen=True)
class IMPBranchConfig:
    lineage: LineageConfig
    kind: str
    round: int
    rewind_step: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in BRANCH_KINDS:
            raise ValueError(f"branch kind {self.kind!r} is not one of {list(BRANCH_KINDS)}")
        rounds = self.lineage.spec.imp.rounds
        if isinstance(self.round, bool) or not isinstance(self.round, int):
            raise ValueError(f"branch round must be an integer, got {self.round!r}")
        if not 1 <= self.round <= rounds:
            raise ValueError(
                f"branch round {self.round} is outside 1..{rounds}, the lineage's pruned rounds"
            )
        if self.kind == "rewind":
            steps = self.lineage.spec.training.steps
            step = self.rewind_step
            if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
                raise ValueError(
                    f"a rewind branch needs --rewind-step S with 0 <= S < {steps} "
                    f"(the lineage's steps); got {step!r}"
                )
        elif self.rewind_step is not None:
            raise ValueError(f"--rewind-step applies to rewind branches, not {self.kind}")

    @property
    def parent_id(self) -> str:
        return self.lineage.lineage_id

    @property
    def branch_id(self) -> str:
        """The parent's id, the kind and the round (and the step): new ids, the parent's kept."""
        suffix = f"-t{self.rewind_step}" if self.kind == "rewind" else ""
        return f"{self.parent_id}-{self.kind}-r{self.round}{suffix}"

    @property
    def start_step(self) -> int:
        """The step the branch trains from: S for ``rewind``, the lineage's t_rewind otherwise."""
        if self.kind == "rewind":
            return self.rewind_step
        return self.lineage.spec.training.rewind_step


class IMPBranch(IMPLineage):
    """One branch of one lineage's round-N ticket, measured as the lineage measures a round.

    It is the lineage's ``imp`` method alone, with the branch's mask and start weights in place
    of the trunk's mask history and θ(t_rewind), so rows, RF widths and kurtosis come from the
    same code as the trunk's.
    """

    def __init__(
        self,
        config: IMPBranchConfig,
        data: ImageDataset,
        store: ExperimentStore,
        device: torch.device | None = None,
    ):
        super().__init__(config.lineage, data, store, device)
        self.branch = config
        self.parent_id = self.id
        self.id = config.branch_id
        self.methods = [IMP]
        self.siblings = {}
        self.finished = False

    @property
    def prepared(self) -> bool:
        return self.rewind_state is not None

    @property
    def done(self) -> bool:
        return self.finished

    def state_dict(self) -> dict:
        return {
            "branch_id": self.id,
            "finished": self.finished,
            "removal_rounds": self.removal_rounds[IMP],
            "start_state": self.rewind_state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["branch_id"] != self.id:
            raise ValueError(
                f"checkpoint belongs to branch {state['branch_id']!r}, not {self.id!r}"
            )
        self.finished = bool(state["finished"])
        self.removal_rounds = {IMP: state["removal_rounds"]}
        self.rewind_state = state["start_state"]

    # -- the branch ----------------------------------------------------------------------
    def step(self) -> dict | None:
        """Prepare (first call), then train and measure (second call; returns the row)."""
        if self.finished:
            raise RuntimeError(f"branch {self.id} has finished")
        if not self.prepared:
            self.prepare()
            return None
        return self.train_and_measure()

    def prepare(self) -> None:
        """Read the trunk's round-N mask and θ(t_rewind); build the branch's mask and start."""
        n = self.branch.round
        parent_rr = self._parent_removal_rounds()
        ticket = mk.masks_after_round(parent_rr, n - 1)
        kind = self.branch.kind
        if kind == "random_prune":
            generator = torch.Generator().manual_seed(
                derived_seed(self.config.seed, "random_prune", n)
            )
            scores = {name: torch.rand(m.shape, generator=generator) for name, m in ticket.items()}
            dense = {name: torch.ones_like(m) for name, m in ticket.items()}
            masks = keep_top(scores, dense, mk.alive_counts(ticket))
        else:
            masks = ticket
        # the branch's history: the trunk's up to round N-1; what only a random mask drops,
        # dropped at the end of round N-1
        self.removal_rounds = {
            IMP: {
                name: torch.where(
                    masks[name], mk.ALIVE, torch.where(ticket[name], n - 1, parent_rr[name])
                )
                for name in self.names
            }
        }
        self.rewind_state = self._start_state()
        self.store.write_tensors(f"lineages/{self.id}/masks/{IMP}.pt", self.removal_rounds[IMP])
        self.store.write_json(f"lineages/{self.id}/branch.json", self._info())

    def train_and_measure(self) -> dict:
        """Train the branch to step T; evaluate and write its row, kurtosis and trained state."""
        start = time.perf_counter()
        n = self.branch.round
        masks = mk.masks_after_round(self.removal_rounds[IMP], n - 1)
        training = Training(
            IMP,
            self._rewound_model(masks),
            self.data,
            self._train_seed(IMP, n),  # the ticket's own batches of round n
            self.branch.start_step,
            masks={k: v.to(self.device) for k, v in masks.items()},
        )
        run_trainings([training], self.spec.training, self.device, stack=False)
        evaluation = self._evaluate(training.model)
        row = self._row(IMP, n, masks, evaluation, time.perf_counter() - start)
        kurtosis = {"kurtosis_mean": None, "kurtosis_all_mean": None, "kurtosis_median": None}
        if self.dense_first_layer and self.imp.measure_kurtosis:
            measured = self._kurtosis(IMP, n)
            kurtosis = {k: measured[k] for k in kurtosis}
        row.update(
            branch=self.branch.kind,
            parent_id=self.parent_id,
            start_step=self.branch.start_step,
            **kurtosis,
        )
        self.store.write_tensors(trained_path(self.id, IMP, n), training.model.state_dict())
        self.store.write_rows(IMP_BRANCHES_TABLE, self.id, "branch", [row])
        self._measure_inputs = None
        self.finished = True
        return row

    # -- helpers -------------------------------------------------------------------------
    def _parent_removal_rounds(self) -> dict[str, torch.Tensor]:
        parent = self.parent_id
        info_rel = f"lineages/{parent}/lineage.json"
        if not self.store.exists(info_rel + ".sha256"):
            raise StoreError(
                f"lineage {parent} has no {self.store.url(info_rel)}: run (or resume) the IMP "
                "experiment before branching it"
            )
        last = self.store.read_json(info_rel).get("last_round")
        n = self.branch.round
        if not isinstance(last, int) or last < n - 1:
            raise StoreError(
                f"lineage {parent} has pruned rounds up to {last!r}: round {n}'s mask needs "
                f"round {n - 1} finished; resume the experiment first"
            )
        rel = f"lineages/{parent}/masks/{IMP}.pt"
        rr = self.store.read_tensors(rel)
        for name in self.names:
            tensor = rr.get(name)
            expected = self.removal_rounds[IMP][name]
            if (
                not isinstance(tensor, torch.Tensor)
                or tensor.shape != expected.shape
                or tensor.dtype != torch.int64
            ):
                raise StoreError(
                    f"{self.store.url(rel)}: entry {name!r} must be an int64 tensor of shape "
                    f"{tuple(expected.shape)}; got {getattr(tensor, 'shape', type(tensor))}"
                )
        return {name: rr[name] for name in self.names}

    def _start_state(self) -> dict[str, torch.Tensor]:
        """The weights (and batch-norm buffers) the branch trains from."""
        kind, t_rewind = self.branch.kind, self.spec.training.rewind_step
        if kind == "reinit":
            model = build_model(
                self.spec.model,
                self.data.image_shape,
                self.data.num_classes,
                derived_seed(self.config.seed, "reinit"),
            )
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
        if kind == "random_prune" or self.branch.rewind_step == t_rewind:
            rel = f"lineages/{self.parent_id}/rewind.pt"
            state = self.store.read_tensors(rel)
            expected = self._fresh_model().state_dict()
            if set(state) != set(expected) or any(
                not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape
                for k, v in expected.items()
            ):
                raise StoreError(
                    f"{self.store.url(rel)} does not hold this model's state: expected the "
                    f"entries {sorted(expected)}"
                )
            return state
        # θ(S) is not stored: replay the lineage's dense round 0 to step S
        model = self._fresh_model().to(self.device)
        train(
            model,
            self.data,
            self.spec.training,
            self._train_seed(IMP, 0),
            device=self.device,
            stop_step=self.branch.rewind_step,
        )
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def _info(self) -> dict:
        return {
            "branch_id": self.id,
            "parent_id": self.parent_id,
            "branch": self.branch.kind,
            "round": self.branch.round,
            "start_step": self.branch.start_step,
            "dataset": self.config.dataset,
            "model": self.spec.model.name,
            "seed": self.config.seed,
            "image_shape": list(self.data.image_shape),
            "first_layer": self.first_layer,
        }
