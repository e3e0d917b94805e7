"""A report section: one figure (or the note saying why it was skipped) and its numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

Output = str | BinaryIO


@dataclass
class Section:
    title: str
    png: str | None = None  # file name under the figures folder
    draw: Callable[[Output], None] | None = None
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> Section:
        """The figure cannot be drawn from what the store holds (yet): say why, draw nothing."""
        self.png, self.draw = None, None
        self.notes.append(f"skipped: {reason}")
        return self

    def markdown(self) -> list[str]:
        lines = [f"## {self.title}", ""]
        if self.png:
            lines += [f"![{self.title}]({self.png})", ""]
        lines += [f"> {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        return lines + self.lines
