"""The ready experiment specs shipped inside the package, so an installed wheel can run them.

They live in ``lotterylab/specs/`` (package data); each describes itself in the comment at its
top, whose first sentence is the one-line summary ``lotterylab specs`` prints.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lotterylab.platform.spec import SpecError

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"  # lotterylab/specs
DEFAULT_SPEC_NAME = "default"
SUMMARY_WIDTH = 100
_SENTENCE_END = re.compile(r"\.(?=\s+[A-Z]|\s*$)")  # "Fig. 2", "al. 2017" go on


def ready_spec_names() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def ready_spec_path(name: str) -> Path:
    """The file of a packaged spec, by name with or without ``.yaml``."""
    stem = name.removesuffix(".yaml")
    names = ready_spec_names()
    if stem not in names:
        raise SpecError(f"{name!r} is not a packaged spec; allowed: {', '.join(names)}")
    return SPECS_DIR / f"{stem}.yaml"


def default_spec_path() -> Path:
    path = SPECS_DIR / f"{DEFAULT_SPEC_NAME}.yaml"
    if not path.is_file():
        raise SpecError(
            f"the packaged default spec {path} is missing from this installation: "
            "reinstall lotterylab or pass a spec path"
        )
    return path


def spec_summary(text: str) -> str:
    """First sentence of the comment block at the top of a spec, cut to one line."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    paragraph = " ".join(part for part in lines if part)
    match = _SENTENCE_END.search(paragraph)
    sentence = paragraph[: match.start()] if match else paragraph
    if len(sentence) > SUMMARY_WIDTH:
        sentence = sentence[: SUMMARY_WIDTH - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def ready_specs() -> dict[str, str]:
    """Every packaged spec's name and one-line summary."""
    return {
        name: spec_summary((SPECS_DIR / f"{name}.yaml").read_text()) for name in ready_spec_names()
    }


def copy_ready_spec(name: str, destination: str | Path | None = None) -> Path:
    """Copy a packaged spec to edit: to ``destination`` (a file, or a folder to put it in),
    by default ``./NAME.yaml``. An existing file is never overwritten."""
    source = ready_spec_path(name)
    target = Path(destination) if destination is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise SpecError(f"{target} already exists: remove it or pass another destination")
    if not target.parent.is_dir():
        raise SpecError(f"cannot write {target}: folder {target.parent} does not exist")
    shutil.copyfile(source, target)
    return target


def spec_file(argument: str | None) -> Path:
    """The spec a command names: a file that exists, else a packaged spec by name
    (``lotterylab run paper1_cpu``), else the packaged default when none is named."""
    if argument is None:
        return default_spec_path()
    path = Path(argument)
    if path.exists() or path.parent != Path("."):
        return path
    stem = argument.removesuffix(".yaml")
    return SPECS_DIR / f"{stem}.yaml" if stem in ready_spec_names() else path
