"""Every error the planner raises: a `PlanError` whose message names the path and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlanError(Exception):
    """Base of all planning errors; catch this to handle any bad input."""


class MalformedSnapshot(PlanError):
    """The snapshot itself is inconsistent (dangling reference, cycle, bad op...)."""


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
        why = f" ({reason})" if reason else ""
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
        via = "" if path == cut_path else f" (on its way to the root)"
        super().__init__(
            f"cut {cut_path!r}: module {path!r}{via} is called {count} times in "
            f"{caller or '<root>'!r}, so the boundary is ambiguous; cut at a module called once."
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
