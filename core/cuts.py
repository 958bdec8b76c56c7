"""Where a user asks for a stage boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Side = Literal["after", "before"]


@dataclass(frozen=True, slots=True, order=True)
class Cut:
    """A stage boundary after (or before) the call of the module at `path`, at any depth."""

    path: str
    side: Side = "after"

    @staticmethod
    def parse(text: str) -> Cut:
        """`"layers.3"` and `"after:layers.3"` cut after; `"before:layers.3"` cuts before."""
        if not isinstance(text, str):
            raise TypeError(f"Cut.parse takes a string, not {type(text).__name__} ({text!r})")
        side, sep, path = text.partition(":")
        if sep and side in ("after", "before"):
            return Cut(path, "before" if side == "before" else "after")
        return Cut(text)

    def __str__(self) -> str:
        return f"{self.side}:{self.path}"


CutLike = Cut | str


def as_cut(cut: CutLike) -> Cut:
    """`cut` as a `Cut`: a `Cut` as it is, a string parsed; anything else is a `TypeError`."""
    if isinstance(cut, Cut):
        return cut
    if isinstance(cut, str):
        return Cut.parse(cut)
    raise TypeError(f"a cut is a module path (str) or a core.Cut, not {type(cut).__name__} ({cut!r})")
