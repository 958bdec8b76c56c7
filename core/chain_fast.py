"""Shortcuts for `core.chain` when the candidates are calls of the root graph (the usual case:
a model's numbered blocks called from its forward), for large snapshots.

- `root_level_flat(snapshot, cuts)`: when every cut is after (or before) a module that the root
  graph calls exactly once and that no traced module above it could call (its ancestors are
  untraced containers that nothing calls), `check_cuts` would accept the cuts and `propagate`
  would inline nothing: the flat graph is the root graph and each boundary sits next to its
  call. This gives that `FlatGraph` in one pass over the root graph, or None when the
  conditions do not hold (then `core.chain` runs the full passes, which also raise the errors).
- `fast_params(snapshot)`: the `params` cost model for flat root graphs, pricing a call of a
  module without children and with one parameter directly; anything else goes to
  `core.costs.params`, so every price is the one `params` gives.

tests/test_balance_speed.py checks both against the full passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.costs import CostContext, CostModel, params
from core.cuts import Cut
from core.graph import Node
from core.propagate import Boundary, FlatGraph
from core.snapshot import Snapshot

__all__ = ["fast_params", "root_level_flat"]


def root_level_flat(snapshot: Snapshot, cuts: Sequence[Cut]) -> FlatGraph | None:
    """The flat graph of `cuts` if they are all root-level calls (module doc), else None."""
    graph = snapshot.root.graph
    if graph is None or not cuts:
        return None
    modules = snapshot.modules
    first: dict[str, int] = {}
    repeated: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if node.op == "call_module":
            target = node.target
            if target in first:
                repeated.add(target)
            else:
                first[target] = i
    seen: set[tuple[str, str]] = set()
    cleared: set[str] = set()  # ancestors found to be untraced containers nothing calls
    bounds = []
    for cut in cuts:
        if type(cut) is not Cut or cut.call is not None or cut.side not in ("after", "before"):
            return None
        path = cut.path
        if not path or path in repeated or path not in first or path not in modules:
            return None
        key = (path, cut.side)
        if key in seen:
            return None
        seen.add(key)
        above = path.rpartition(".")[0]
        while above and above not in cleared:
            module = modules.get(above)
            if module is None or module.graph is not None or above in first:
                return None
            cleared.add(above)
            above = above.rpartition(".")[0]
        i = first[path]
        bounds.append(Boundary(i + 1 if cut.side == "after" else i, cut))
    if any(a.position > b.position for a, b in zip(bounds, bounds[1:])):
        bounds.sort(key=lambda b: b.position)
    return FlatGraph(graph, tuple(bounds))


def fast_params(snapshot: Snapshot) -> CostModel:
    """`core.costs.params`, quicker on the calls of small leaf modules (module doc)."""
    modules = snapshot.modules

    def price(node: Node, where: CostContext) -> float:
        op = node.op
        if op == "call_module":
            module = modules.get(node.target if not where.prefix else where.path(node))
            if module is not None and not module.children:
                found = module.params
                if len(found) == 1:
                    for param in found.itervalues():
                        return 0.0 if param.buffer else float(param.nbytes)
                if not found:
                    return 0.0
            return params(node, where)
        if op == "get_attr":
            return params(node, where)
        return 0.0

    return price
