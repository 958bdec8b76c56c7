"""Every error the planner raises: a `PlanError` whose message names the path and the fix."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any


class PlanError(Exception):
    """Base of all planning errors; catch this to handle any bad input."""


class MalformedSnapshot(PlanError):
    """The snapshot itself is inconsistent (dangling reference, cycle, bad op...).

    Raised by the JSON reader, `json_path` names the bad field (``$.root.children.enc.graph[2]``)
    and starts the message; raised by `plan` on a snapshot built in Python, it is ``None``.
    """

    def __init__(self, message: str, json_path: str | None = None) -> None:
        super().__init__(f"{json_path}: {message}" if json_path else message)
        self.json_path = json_path
        # Where `check_snapshot`/`check_plan` found the problem, for the JSON reader to turn
        # into a JSON path: (module path, field below it) for a snapshot, ("", field) for a plan.
        self.location: tuple[str, str] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # the message already holds the path: rebuild from it alone (pickle, other processes)
        return (type(self), (str(self),))


class MalformedPlan(MalformedSnapshot):
    """A plan (read from JSON, or built by hand) is inconsistent with its own graphs.

    A subclass of `MalformedSnapshot`, so code that caught that for bad plan JSON still does."""


class CutError(PlanError):
    """A requested cut cannot be honoured."""


class UnknownPath(CutError):
    def __init__(self, path: str, known: Iterable[str]) -> None:
        close = difflib.get_close_matches(path, list(known), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"cut {path!r}: no module has this path.{hint}")
        self.path = path
        self.suggestions = tuple(close)


class CutAtRoot(CutError):
    def __init__(self) -> None:
        super().__init__(
            "cut '': the root module cannot be cut; cut after (or before) one of its children instead."
        )


class CutInsideLeaf(CutError):
    def __init__(self, path: str, leaf: str, reason: str | None) -> None:
        why = f" ({printable(reason)})" if reason else ""
        super().__init__(
            f"cut {path!r}: it lies inside {leaf or '<root>'!r}, which was not traced{why}; "
            f"cut at {leaf!r} itself, or make it traceable."
        )
        self.path = path
        self.leaf = leaf


class NotCalled(CutError):
    def __init__(self, path: str, children: Iterable[str], cut_path: str | None = None) -> None:
        if cut_path is not None and cut_path != path:  # a module on the way to the root
            super().__init__(
                f"cut {cut_path!r}: the module {path!r} above it is never called as a module by "
                "a traced parent, so the cut cannot reach the root graph; cut at a module that "
                "is called."
            )
            self.path = cut_path
            return
        kids = sorted(children)
        hint = f"; cut at one of its children ({kids[0]} ... {kids[-1]})" if kids else ""
        super().__init__(
            f"cut {path!r}: this module is never called as a module by a traced parent "
            f"(containers such as ModuleList are not called){hint}."
        )
        self.path = path


class CalledMoreThanOnce(CutError):
    def __init__(self, cut_path: str, path: str, caller: str, count: int) -> None:
        via = "" if path == cut_path else " (on its way to the root)"
        if path == cut_path:
            spelled = ", ".join(f"{path}#{k}" for k in range(min(count, 4))) + (", ..." if count > 4 else "")
            fix = f"name one call: {spelled} (call k, from 0, in execution order)."
        else:
            fix = "a cut inside it cannot name one call; cut at one of its calls (path#k) instead."
        super().__init__(
            f"cut {cut_path!r}: module {path!r}{via} is called {count} times in "
            f"{caller or '<root>'!r}, so the boundary is ambiguous; {fix}"
        )
        self.path = cut_path


class DuplicateCut(CutError):
    def __init__(self, text: str) -> None:
        super().__init__(f"cut {text} is given more than once; remove the duplicate.")


class EmptyStage(CutError):
    def __init__(self, stage: int, before: str, after: str) -> None:
        super().__init__(
            f"stage {stage} would be empty: nothing is computed between {before} and {after}; "
            f"remove one of these cuts."
        )
        self.stage = stage


class UnsupportedGraph(PlanError):
    """The graph uses a construct the planner cannot inline (e.g. *args placeholders)."""


class BalanceError(PlanError):
    """Automatic balancing cannot run on these inputs (stage count, costs, candidates)."""


def printable(text: str) -> str:
    """`text` safe to show on a terminal: control characters (C0, DEL, C1) and the bidirectional
    overrides that reorder what is shown become escapes (``\\x1b``, ``\\u202e``); everything else,
    including non-ASCII letters, is kept."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
