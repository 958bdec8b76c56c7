"""Where a cut is possible: the modules whose call can be lifted to the root graph.

A module can be cut after (or before) when it is called exactly once by its traced parent,
that parent is called exactly once by its own, and so on up to the root, and every parent
on the way can be inlined (no `*args`). This is what `core.validate.check_cuts` accepts
for a single cut, computed for every module at once from `call_sites`.
"""

from __future__ import annotations

from core.snapshot import Snapshot
from core.validate import call_sites


def cut_points(snapshot: Snapshot) -> frozenset[str]:
    """Paths of every module that a cut can name (the root excluded)."""
    sites = call_sites(snapshot)
    reaches: dict[str, bool] = {"": True}

    def reach(path: str) -> bool:  # the call of `path` can be lifted to the root graph
        if path not in reaches:
            calls = sites.get(path, [])
            caller = calls[0][0] if len(calls) == 1 else None
            reaches[path] = caller is not None and (caller == "" or (_inlinable(snapshot, caller) and reach(caller)))
        return reaches[path]

    return frozenset(path for path in snapshot.modules if path and reach(path))


def per_call_points(snapshot: Snapshot) -> dict[str, int]:
    """Modules called several times, all from one caller whose call reaches the root graph:
    path -> how many calls; a cut names one of them as `path#k`."""
    sites = call_sites(snapshot)
    cuttable = cut_points(snapshot) | {""}
    return {
        path: len(calls)
        for path, calls in sites.items()
        if len(calls) > 1 and len({c for c, _ in calls}) == 1 and calls[0][0] in cuttable
        and (calls[0][0] == "" or _inlinable(snapshot, calls[0][0]))
    }


def _inlinable(snapshot: Snapshot, path: str) -> bool:
    graph = snapshot.modules[path].graph
    return graph is not None and not any(n.target.startswith("*") for n in graph.placeholders)
