"""Reading spec YAML as hostile input: bounded in size and depth, no aliases, no duplicate keys.

PyYAML's safe loader still expands aliases (a few lines can name billions of values), lets a
repeated key silently replace the first, and recurses once per nesting level. A spec is small
and written by hand, so none of these is needed: anchors and aliases are refused (not expanded
under a cap: a spec that needs them is better written out), a repeated key is refused naming
both lines, and file size and nesting depth have fixed caps.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: specs are hand-written; the default one is 1 KiB
MAX_DEPTH = 64  # nesting levels of mappings and sequences
MAX_SHOWN = 80  # characters of a value shown in an error message
# data set fields holding local paths; relative ones are taken from the spec file's folder
PATH_FIELDS = ("root", "cache")


class SpecYAMLError(ValueError):
    """Spec text that is not accepted; the message names the source and the line."""


def _where(source: str, node_or_event) -> str:
    return f"{source}, line {node_or_event.start_mark.line + 1}"


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing anchors, aliases and nesting beyond ``MAX_DEPTH``."""

    source = "<spec>"

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise SpecYAMLError(
                f"{_where(self.source, event)}: YAML alias *{event.anchor} is not allowed in an "
                "experiment spec; write the value out"
            )
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None:
            raise SpecYAMLError(
                f"{_where(self.source, event)}: YAML anchor &{event.anchor} is not allowed in an "
                "experiment spec; write the value out where it is used"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecYAMLError(
                    f"{_where(self.source, event)}: nesting deeper than {MAX_DEPTH} levels"
                )
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1


def _check_duplicates(node: Node, path: str, source: str) -> None:
    """Refuse a key that repeats within one mapping, naming the key path and both lines."""
    if isinstance(node, MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key.value, str) else f"<{key.tag}>"
            where = f"{path}.{name}" if path else str(name)
            if name in seen:
                raise SpecYAMLError(
                    f"{source}: duplicate key {shown(where)} at lines {seen[name]} and "
                    f"{key.start_mark.line + 1}; keep one of them"
                )
            seen[name] = key.start_mark.line + 1
            _check_duplicates(value, where, source)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}.{i}" if path else str(i), source)


def load_yaml_text(text: str, source: str = "<spec>") -> Any:
    """The data of one YAML document, read under the bounds above."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise SpecYAMLError(
            f"experiment spec {source} is {size} bytes; the limit is {MAX_SPEC_BYTES} bytes (1 MiB)"
        )
    loader = _BoundedLoader(text)
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, "", source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecYAMLError(f"experiment spec {source} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def read_spec_file(path: Path) -> str:
    """The text of a spec file, size-checked before it is read and decoded as UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecYAMLError(
                f"experiment spec {path} is {size} bytes; the limit is {MAX_SPEC_BYTES} bytes "
                "(1 MiB)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise SpecYAMLError(f"cannot read experiment spec {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecYAMLError(
            f"experiment spec {path} is not UTF-8 text: byte {data[exc.start]:#04x} at line "
            f"{line} (offset {exc.start}); save the file as UTF-8"
        ) from None


def resolve_data_paths(data: Any, folder: Path) -> Any:
    """The spec data with relative data set paths (``root``, ``cache``) made absolute.

    They are taken from the spec file's folder, as a reader of the file would; a trial runs in
    its own working directory, where a relative path means nothing.
    """
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list):
        return data
    datasets = []
    for entry in data["datasets"]:
        if isinstance(entry, dict):
            entry = dict(entry)
            for key in PATH_FIELDS:
                value = entry.get(key)
                if isinstance(value, str) and value and not _absolute(value):
                    entry[key] = str((folder / value).resolve())
        datasets.append(entry)
    return {**data, "datasets": datasets}


def _absolute(value: str) -> bool:
    return "://" in value or Path(value).expanduser().is_absolute()


def missing_data_paths(spec) -> list[str]:
    """Lines naming each data set path of ``spec`` that does not exist on this machine.

    ``root`` must exist; ``cache`` is created on first use, so its parent folder must exist.
    """
    problems = []
    for i, data in enumerate(spec.datasets):
        for key in PATH_FIELDS:
            value = getattr(data, key, None)
            if not isinstance(value, str):
                continue
            path = Path(value).expanduser()
            check = path if key == "root" else path.parent
            if not check.exists():
                what = "folder" if key == "root" else "parent folder"
                problems.append(
                    f"  datasets.{i}.{key}: {what} {check} does not exist (a relative path is "
                    "taken from the spec file's folder)"
                )
    return problems


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 8, 8, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = MAX_SHOWN, MAX_SHOWN, MAX_SHOWN


def shown(value: Any) -> str:
    """A one-line ``repr`` of at most ``MAX_SHOWN`` characters, whatever the value's size."""
    text = _REPR.repr(value).replace("\n", "\\n")
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def one_line(message: str, limit: int = 4 * MAX_SHOWN) -> str:
    """An error message cut to one line of at most ``limit`` characters."""
    message = message.replace("\n", " ")
    return message if len(message) <= limit else message[: limit - 1] + "…"


__all__ = [
    "MAX_DEPTH",
    "MAX_SPEC_BYTES",
    "PATH_FIELDS",
    "SpecYAMLError",
    "load_yaml_text",
    "missing_data_paths",
    "one_line",
    "read_spec_file",
    "resolve_data_paths",
    "shown",
]
