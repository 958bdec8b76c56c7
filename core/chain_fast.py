"""Shortcuts for `core.chain` when the candidates are calls of the root graph (the usual case:
a model's numbered blocks called from its forward), for large snapshots.

- `root_level_flat(snapshot, cuts)`: when every cut is after (or before) a module that the root
  graph calls exactly once and that no traced module above it could call (its ancestors are
  untraced containers that nothing calls), `check_cuts` would accept the cuts and `propagate`
  would inline nothing: the flat graph is the root graph and each boundary sits next to its
  call. This gives that `FlatGraph` in a few passes over the root graph that run in C (map,
  dict, set), or None when the conditions do not hold (then `core.chain` runs the full passes,
  which also raise the errors).
- `root_calls_flat(snapshot, cuts, calls)`: the same flat graph for automatic candidates that
  `core.candidates` placed while finding them (`RootCalls`: the conditions hold by
  construction), with no pass over the graph at all.
- `params_prices(snapshot, graph)`: the `params` price of every node of a root graph, pricing a
  call of a module without children and with one parameter inline; anything else goes to
  `core.costs.params`, so every price is the one `params` gives.
- `instances(cls, count, **columns)`: many frozen dataclass values made at once (the cuts and
  boundaries of 100k candidates).

tests/test_balance_speed.py checks each against the full passes and plain construction.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import attrgetter, itemgetter, methodcaller
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pyrsistent import PMap, pmap

from core.costs import CostContext, params
from core.cuts import Cut
from core.graph import Graph
from core.propagate import Boundary, FlatGraph
from core.snapshot import Snapshot

if TYPE_CHECKING:
    from core.candidates import RootCalls  # core.candidates uses `instances`

__all__ = ["instances", "params_prices", "root_calls_flat", "root_level_flat"]

T = TypeVar("T")

_path = attrgetter("path")
_side = attrgetter("side")
_call = attrgetter("call")
_parent = methodcaller("rpartition", ".")
_first = itemgetter(0)
_NONE: PMap[str, Any] = pmap()  # pyrsistent's one empty map: leaves' children, found without a call


def root_level_flat(snapshot: Snapshot, cuts: Sequence[Cut]) -> FlatGraph | None:
    """The flat graph of `cuts` if they are all root-level calls (module doc), else None."""
    graph = snapshot.root.graph
    if graph is None or not cuts:
        return None
    if set(map(type, cuts)) != {Cut} or set(map(_call, cuts)) != {None}:
        return None
    sides = list(map(_side, cuts))
    kinds = set(sides)
    if not kinds <= {"after", "before"}:
        return None
    paths = list(map(_path, cuts))
    distinct = set(paths)
    if "" in distinct:
        return None
    if len(distinct) != len(paths) and len(set(zip(paths, sides))) != len(paths):
        return None  # a duplicate cut: check_cuts names it
    # Where the root graph calls each module (its first call), and who it calls more than once.
    calls = [(node.target, i) for i, node in enumerate(graph.nodes) if node.op == "call_module"]
    first = dict(reversed(calls))
    if len(first) != len(calls):
        repeated = {target for target, count in Counter(map(_first, calls)).items() if count > 1}
        if not repeated.isdisjoint(distinct):
            return None
    index = list(map(first.get, paths))
    if None in index:
        return None
    modules = snapshot.modules
    if not all(map(modules.__contains__, distinct)):
        return None
    # Ancestors must be untraced containers that the root does not call.
    cleared: set[str] = set()
    for above in set(map(_first, map(_parent, distinct))):
        while above and above not in cleared:
            module = modules.get(above)
            if module is None or module.graph is not None or above in first:
                return None
            cleared.add(above)
            above = above.rpartition(".")[0]
    found = cast(list[int], index)  # no None: checked above
    if kinds == {"after"}:
        positions = [i + 1 for i in found]
    else:
        positions = [i + 1 if side == "after" else i for i, side in zip(found, sides)]
    return _flat(graph, positions, cuts)


def root_calls_flat(snapshot: Snapshot, cuts: Sequence[Cut], calls: RootCalls) -> FlatGraph:
    """`root_level_flat` for automatic candidates whose calls `core.candidates` has placed (the
    conditions hold by construction: `RootCalls`)."""
    graph = snapshot.root.graph
    assert graph is not None and len(calls.index) == len(cuts)
    return _flat(graph, [i + 1 for i in calls.index], cuts)


def _flat(graph: Graph, positions: list[int], cuts: Sequence[Cut]) -> FlatGraph:
    """The root graph with a boundary at positions[k] for cuts[k], sorted by position (stably,
    as `propagate` sorts them)."""
    bounds = instances(Boundary, len(positions), position=positions, cut=cuts)
    if positions != sorted(positions):
        order = sorted(range(len(positions)), key=positions.__getitem__)
        bounds = [bounds[k] for k in order]
    return FlatGraph(graph, tuple(bounds))


def params_prices(snapshot: Snapshot, graph: Graph) -> list[float]:
    """`core.costs.params` of every node of `graph`, a graph of the root (its targets are full
    paths), in order: the call of a module without children and with one parameter priced
    here, every other call and parameter read by `params` itself. All are floats, finite and
    >= 0 (byte counts, checked by `check_snapshot`)."""
    get = snapshot.modules.get
    where = CostContext(snapshot, graph)
    out: list[float] = []
    append = out.append
    for node in graph.nodes:
        op = node.op
        if op == "call_module":
            module = get(node.target)
            if module is not None and (module.children is _NONE or not module.children):
                found = module.params
                if len(found) == 1:
                    for _, param in found.iteritems():
                        append(0.0 if param.buffer else float(param.nbytes))
                    continue
                if not found:
                    append(0.0)
                    continue
            append(params(node, where))
        elif op == "get_attr":
            append(params(node, where))
        else:
            append(0.0)
    return out


def instances(cls: type[T], count: int, **columns: Iterable[Any]) -> list[T]:
    """``[cls(**row) for row in rows]``, the rows given as columns (one iterable of `count`
    values per field, every field given), for frozen slotted dataclasses without
    ``__post_init__``: the slots are filled column by column in C, where the generated
    ``__init__`` makes one call per field per object (twice as slow at 100k objects). Other
    classes are made by calling them."""
    fields: dict[str, Any] | None = getattr(cls, "__dataclass_fields__", None)
    if (
        fields is None
        or set(fields) != set(columns)
        or hasattr(cls, "__post_init__")
        or "__slots__" not in cls.__dict__
    ):
        names = list(columns)
        return [cls(**dict(zip(names, row))) for row in zip(*columns.values())]
    made: list[T] = list(map(object.__new__, repeat(cls, count)))
    for name, values in columns.items():
        deque(map(cls.__dict__[name].__set__, made, values), maxlen=0)
    return made
