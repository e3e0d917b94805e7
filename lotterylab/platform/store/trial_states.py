"""Every trial's resumable state, kept in the store beside its results: the only truth for resume.

Tune's own experiment state (``tuner.pkl``, ``params.pkl``, trial and searcher pickles) is never
read back: anyone who can write the bucket could put code in it, and a checksum kept in the same
bucket would not stop them. A state here is a torch file of tensors and plain values, written
atomically with its checksum and loaded with ``weights_only``. It is written after the rows of
the round (or epoch) it follows, so a resumed trial repeats at most the step that was running,
and it holds the trial's last reported result, so a finished trial resumed reports it again.

An IMP lineage or branch keeps its states in ``lineages/<id>/states/``, a PaI run in
``runs/<id>/states/``, one file per step (``step-000003.pt``: after round 3, or epoch 3). The two
newest are kept: a writer that dies between a state and its checksum leaves the previous one.
"""

from __future__ import annotations

import io
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import torch

from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError

STATES = "states"
_STATE_FILE = re.compile(r"step-(\d{6})\.pt$")
KEEP = 2
MARKER = "trial_states.json"  # the experiment keeps its trials' states here (this version on)
STOPPED_FILE = "stopped_early.json"
MAX_STATE_BYTES = 16 * 2**30  # far above any model this platform trains; bounds a hostile file
# files that Tune checkpoints of earlier versions hold: the trainables' own torch.save output
LEGACY_CHECKPOINT_FILES = ("lineage.pt", "run.pt", "branch.pt")
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


@dataclass(frozen=True)
class TrialState:
    state: dict[str, Any]
    result: dict[str, Any] | None  # None for a state adopted from an earlier version


def lineage_folder(lineage_id: str) -> str:
    return f"lineages/{lineage_id}"


def run_folder(run_id: str) -> str:
    return f"runs/{run_id}"


def _load(data: bytes, where: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # hostile bytes can fail anywhere in the zip or pickle reader
        raise StoreError(
            f"{where} is not a state torch.load(weights_only=True) can read "
            f"({type(exc).__name__}); delete it so the trial starts that step again"
        ) from exc


def write_state(
    store: ExperimentStore, folder: str, step: int, state: dict, result: dict | None = None
) -> str:
    """Store the state after ``step``; drop all but the ``KEEP`` newest."""
    buffer = io.BytesIO()
    torch.save({"state": state, "result": result}, buffer)
    digest = store.write_artifact(f"{folder}/{STATES}/step-{step:06d}.pt", buffer.getvalue())
    for older in _steps(store, folder)[:-KEEP]:
        for rel in (_state_rel(folder, older), _state_rel(folder, older) + ".sha256"):
            store.remove(rel)
    return digest


def _state_rel(folder: str, step: int) -> str:
    return f"{folder}/{STATES}/step-{step:06d}.pt"


def _steps(store: ExperimentStore, folder: str) -> list[int]:
    names = (_STATE_FILE.match(n) for n in store.list(f"{folder}/{STATES}"))
    return sorted(int(m.group(1)) for m in names if m)


def read_state(store: ExperimentStore, folder: str) -> TrialState | None:
    """The newest complete state in ``folder``; None when its trial has not finished a step.

    A newest state without its checksum (its writer died) gives way to the one before; a
    corrupt or foreign one is an error naming the file.
    """
    for step in reversed(_steps(store, folder)):
        rel = _state_rel(folder, step)
        if not store.exists(rel + ".sha256"):
            continue
        _check_size(store, rel)
        stored = _load(store.read_artifact(rel), store.url(rel))
        if not isinstance(stored, dict) or not isinstance(stored.get("state"), dict):
            raise StoreError(f"{store.url(rel)} holds no trial state; delete it to start over")
        result = stored.get("result")
        return TrialState(stored["state"], result if isinstance(result, dict) else None)
    return None


def _check_size(store: ExperimentStore, rel: str) -> None:
    size = store.fs.size(store.path(rel))
    if size is not None and size > MAX_STATE_BYTES:
        raise StoreError(
            f"{store.url(rel)} is {size} bytes, over the {MAX_STATE_BYTES}-byte bound of a state"
        )


def mark_stopped_early(store: ExperimentStore, folder: str) -> None:
    """A scheduler stopped the trial: a resumed search keeps that decision."""
    store.write_json(f"{folder}/{STOPPED_FILE}", {"stopped_early": True})


def stopped_early(store: ExperimentStore, folder: str) -> bool:
    return store.exists(f"{folder}/{STOPPED_FILE}.sha256")


def adopt_legacy_checkpoints(store: ExperimentStore, tune_folder: str = "") -> list[str]:
    """States for the trials of an experiment written before states lived in the store.

    Earlier versions kept them only in Tune's checkpoint folders (``trial-*/checkpoint_N/``);
    the newest of each trial is read (with ``weights_only``, as its own state) and stored where
    today's trainables look. Trials that already have a state keep it. An experiment that
    keeps its states in the store (:func:`keep_states_here`) is not searched. Returns the
    folders written.
    """
    marker = posixpath.join(tune_folder, MARKER)
    if store.exists(marker + ".sha256"):
        return []
    adopted = []
    for trial in store.list(tune_folder):
        if not trial.startswith("trial-"):
            continue
        trial_rel = posixpath.join(tune_folder, trial)
        numbered = [(_CHECKPOINT_DIR.match(n), n) for n in store.list(trial_rel)]
        checkpoints = sorted((int(m.group(1)), n) for m, n in numbered if m)
        if not checkpoints:
            continue
        newest = posixpath.join(trial_rel, checkpoints[-1][1])
        for name in LEGACY_CHECKPOINT_FILES:
            rel = posixpath.join(newest, name)
            if store.exists(rel):
                _check_size(store, rel)
                adopted += _adopt(store, _load(store.read_bytes(rel), store.url(rel)), rel)
    keep_states_here(store, tune_folder)
    return adopted


def keep_states_here(store: ExperimentStore, tune_folder: str = "") -> None:
    """Mark a (Tune) experiment folder whose trials keep their states in the store."""
    store.write_json(posixpath.join(tune_folder, MARKER), {"states": "lineages/<id>, runs/<id>"})


def _adopt(store: ExperimentStore, state: Any, rel: str) -> list[str]:
    states = state.get("lineages", [state]) if isinstance(state, dict) else None
    if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        raise StoreError(f"{store.url(rel)} holds no trial state of this platform")
    written = []
    for one in states:
        if "run_id" in one:
            folder = run_folder(str(one["run_id"]))
        elif "lineage_id" in one or "branch_id" in one:
            folder = lineage_folder(str(one.get("lineage_id", one.get("branch_id"))))
        else:
            raise StoreError(f"{store.url(rel)} names no lineage, run or branch")
        if read_state(store, folder) is None:
            write_state(store, folder, _step_of(one), one)
            written.append(folder)
    return written


def _step_of(state: dict) -> int:
    if "branch_id" in state:
        return 2 if state.get("finished") else 1
    return int(state.get("next_round", state.get("next_epoch", 0)))


__all__ = [
    "STATES",
    "TrialState",
    "adopt_legacy_checkpoints",
    "keep_states_here",
    "lineage_folder",
    "mark_stopped_early",
    "read_state",
    "run_folder",
    "stopped_early",
    "write_state",
]
