"""Where a user asks for a stage boundary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Side = Literal["after", "before"]


@dataclass(frozen=True, slots=True, order=True)
class Cut:
    """A stage boundary after (or before) the call of the module at `path`, at any depth.

    `call=k` names one call of a module that is called several times (call k, from 0, in
    execution order), as in an ALBERT-style shared layer group; spelled `path#k`."""

    path: str
    side: Side = "after"
    call: int | None = None

    @staticmethod
    def parse(text: str) -> Cut:
        """`"layers.3"` and `"after:layers.3"` cut after; `"before:layers.3"` cuts before;
        `"group#2"` cuts after the third call of `group`."""
        if not isinstance(text, str):
            raise TypeError(f"Cut.parse takes a string, not {type(text).__name__} ({text!r})")
        side, sep, path = text.partition(":")
        if not (sep and side in ("after", "before")):
            side, path = "after", text
        call = None
        found = _CALL.fullmatch(path)
        if found is not None:
            path, call = found.group(1), int(found.group(2))
        return Cut(path, "before" if side == "before" else "after", call)

    def __str__(self) -> str:
        return f"{self.side}:{self.path}" + ("" if self.call is None else f"#{self.call}")


_CALL = re.compile(r"(.*)#(\d+)")


CutLike = Cut | str


def as_cut(cut: CutLike) -> Cut:
    """`cut` as a `Cut`: a `Cut` as it is, a string parsed; anything else is a `TypeError`."""
    if isinstance(cut, Cut):
        return cut
    if isinstance(cut, str):
        return Cut.parse(cut)
    raise TypeError(f"a cut is a module path (str) or a core.Cut, not {type(cut).__name__} ({cut!r})")
