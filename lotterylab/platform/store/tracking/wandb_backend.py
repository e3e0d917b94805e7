"""Weights & Biases: one run per tracker key (id derived from it), resumed, steps logged once.

Online, a resumed run starts at the server's next step and earlier steps are skipped. Offline,
the run's earlier files under WANDB_DIR say which steps it holds (``offline_history``).
Imported only when a spec asks for W&B, so the platform imports without it.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping

import wandb
from wandb.proto import wandb_internal_pb2

from lotterylab.platform.store.tracking.rows import TrackedStep, external_id
from lotterylab.platform.store.tracking.spec import WandbSpec

FIELD = "tracking.wandb"
# the record log of a .wandb file: a 7-byte header, then 32 KiB blocks of records, each with
# a 7-byte header (crc32 of type + data, length, type: 1 full, 2 first, 3 middle, 4 last)
_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_BLOCK = 32768
_MAX_FILE = 1 << 30


def wandb_dir() -> str:
    return os.environ.get("WANDB_DIR") or os.getcwd()


class WandbBackend:
    def __init__(self, spec: WandbSpec, experiment_uri: str):
        self.spec, self.experiment_uri = spec, experiment_uri
        self._runs: dict[str, tuple[object, int]] = {}  # key -> (run, first step to log)

    def log(self, step: TrackedStep) -> None:
        run, first = self._run(step.key, step.params)
        if step.step >= first and step.metrics:
            run.log(step.metrics, step=step.step)  # a step logged twice in a row merges
        if step.final:
            run.finish()
            del self._runs[step.key]

    def summary(self, key: str, params: Mapping[str, str], files: Mapping[str, bytes]) -> None:
        run, _ = self._run(key, params)
        artifact = wandb.Artifact("figures", type="figures")
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                path = os.path.join(folder, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as handle:
                    handle.write(data)
                artifact.add_file(path, name=name)
            run.log_artifact(artifact)
            run.finish()
        self._runs.pop(key, None)

    def close(self) -> None:
        for run, _ in self._runs.values():
            run.finish()
        self._runs.clear()

    def _run(self, key: str, params: Mapping[str, str]):
        if key not in self._runs:
            ident = external_id(self.experiment_uri, key)
            held = offline_history(wandb_dir(), ident) if self.spec.mode == "offline" else {}
            run = wandb.init(
                project=self.spec.project,
                entity=self.spec.entity,
                id=ident,
                name=key,
                resume="allow",
                mode=self.spec.mode,
                dir=wandb_dir(),
                config=dict(params),
                reinit="create_new",
                settings=wandb.Settings(console="off", silent=True),
            )
            first = max(run.starting_step, max(held, default=-1) + 1)
            self._runs[key] = (run, first)
        return self._runs[key]


def _records(path: str) -> Iterator[bytes]:
    """The whole records of a .wandb file; a torn tail (a killed writer) ends the scan."""
    size = os.path.getsize(path)
    if size > _MAX_FILE:
        raise ValueError(f"{path}: {size} bytes, more than the {_MAX_FILE} a run file may hold")
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < _HEADER.size or _HEADER.unpack_from(data)[0] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no :W&B header)")
    pos, pending = _HEADER.size, b""
    while pos + _RECORD.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD.size:
            pos += left
            continue
        crc, length, kind = _RECORD.unpack_from(data, pos)
        chunk = data[pos + _RECORD.size : pos + _RECORD.size + length]
        if kind == 0 or len(chunk) < length or crc != zlib.crc32(bytes([kind]) + chunk):
            return
        pos += _RECORD.size + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def offline_files(directory: str, run_id: str) -> list[str]:
    """The offline run files of ``run_id`` under ``directory`` (one per process that ran it)."""
    pattern = os.path.join(directory, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb")
    return sorted(glob.glob(pattern))


def file_history(path: str) -> list[tuple[int, dict[str, float]]]:
    """The (step, values) history records of one offline run file, in file order."""
    history = []
    for data in _records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        values = {}
        for item in record.history.item:
            name = item.key or ".".join(item.nested_key)
            if not name.startswith("_"):
                values[name] = json.loads(item.value_json)
        history.append((record.history.step.num, values))
    return history


def offline_history(directory: str, run_id: str) -> dict[int, dict[str, float]]:
    """Step -> logged values of every offline file of ``run_id`` under ``directory``."""
    merged: dict[int, dict[str, float]] = {}
    for path in offline_files(directory, run_id):
        for step, values in file_history(path):
            merged.setdefault(step, {}).update(values)
    return merged


def check(spec: WandbSpec) -> None:
    """Offline: the run folder must be writable. Online: the key must reach the server."""
    if spec.mode == "offline":
        os.environ.setdefault("WANDB_DIR", os.getcwd())  # trials of an embedded Ray inherit it
        directory = wandb_dir()
        try:
            os.makedirs(os.path.join(directory, "wandb"), exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=os.path.join(directory, "wandb")):
                pass
        except OSError as error:
            raise ValueError(
                f"{FIELD}.mode: offline run files cannot be written under WANDB_DIR="
                f"{directory!r}: {error}"
            ) from error
        return
    try:
        wandb.Api(timeout=10).viewer  # noqa: B018 - reaching the server is the check
    except Exception as error:
        raise ValueError(
            f"{FIELD}: cannot reach W&B for project {spec.project!r}: {error} (log in with "
            "`wandb login` or WANDB_API_KEY, or use mode: offline)"
        ) from error
