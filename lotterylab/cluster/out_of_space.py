"""A full disk or quota stops a run with exit 1, the path and the free space, never a traceback.

Trials that cannot write fail (what they finished is stored: every write is atomic and a state
follows its round's rows), and Tune's driver may then die reading its own half-written files.
Either way the run ends here, and ``resume`` goes on from the stored states once space is freed.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable

from lotterylab.platform.store.experiment_store import ExperimentStore

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "errno 28")
LOW_SPACE_BYTES = 2**20  # below this a failed run on a local disk is taken as out of space


class StorageFullError(RuntimeError):
    """The experiment's storage ran out of space."""


def free_bytes(store: ExperimentStore) -> int | None:
    """Free bytes on the disk of a local store (None for object storage)."""
    if not store.is_local:
        return None
    path = store.root
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _chain(error: BaseException | str) -> Iterable[BaseException | str]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        if isinstance(error, str):
            return
        error = error.__cause__ or error.__context__


def out_of_space(store: ExperimentStore, errors: list[BaseException | str]) -> bool:
    """Whether these errors (of trials or of Tune itself) came from a full disk or quota."""
    for error in errors:
        for link in _chain(error):
            if isinstance(link, OSError) and link.errno in NO_SPACE:
                return True
            if any(text in str(link) for text in NO_SPACE_TEXTS):
                return True
    free = free_bytes(store)
    return bool(errors) and free is not None and free < LOW_SPACE_BYTES


def storage_full(store: ExperimentStore) -> StorageFullError:
    free = free_bytes(store)
    room = f"{free} bytes free on its disk" if free is not None else "a quota or size limit"
    return StorageFullError(
        f"the storage of {store.uri} ran out of space ({room}): the rounds and epochs that "
        f"finished are stored, no report was written. Free space, then continue with: "
        f"lotterylab resume {store.uri}"
    )


__all__ = ["StorageFullError", "free_bytes", "out_of_space", "storage_full"]
