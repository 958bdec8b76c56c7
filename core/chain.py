"""The chain: a snapshot's candidate boundaries in execution order and the cost between them.

    found = chain(snapshot, costs.params)    # Chain(boundaries, segment_costs, ...)

Core's own passes (`check_cuts` + `propagate`) run with *every* candidate (`core.candidates`)
as a cut, giving the flat graph and the position of each candidate boundary in it. The cost
model prices every node; the sum between consecutive boundaries is a segment cost, so the work
before the first candidate (embeddings) joins the first segment and the work after the last
(the head) the last one. With ``with_bytes``, stage assignment and liveness on that flat graph
give the bytes crossing each boundary. `core.partition` then splits the chain.

Speed (100k candidates in well under a second): candidates that the root graph calls skip the
cut checks and inlining, which would change nothing (`core.chain_fast`); `params` is priced in
one inline pass; prices are checked in bulk, node by node only when a check fails (so the error
names the first bad node); segment sums, busy tests and crossing bytes avoid per-node Python
work where C can do it. Each shortcut is checked against the general path in
tests/test_balance_speed.py.

Pricing: nodes are priced on the flat graph in which every candidate is a cut, so modules on
the way to a candidate are inlined. `flops` and `params` give a module (nearly) one price whole or
inlined; a table of module costs (`by_module`) prices modules that stay whole. Bytes crossing
a boundary are exact for the plan of the chosen cuts when its spine is the candidates' spine
(the usual case: the candidates are siblings); a plan with fewer cuts may inline less, and a
module's tuple output then crosses whole instead of item by item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate, compress, count, repeat
from operator import add, attrgetter, lt, ne, sub

from core.assign import ANY_STAGE, assign_stages
from core.candidates import Candidates, candidate_calls
from core.chain_fast import params_prices, root_calls_flat, root_level_flat
from core.costs import CostContext, CostModel, ModuleCosts, by_module, params
from core.cuts import Cut
from core.errors import BalanceError, UnknownPath
from core.graph import EMPTY_KWARGS, DictOf, Graph, ListOf, Node, Ref, SliceOf, refs
from core.liveness import live_in
from core.propagate import Boundary, FlatGraph, propagate
from core.rules import PROJECTIONS
from core.snapshot import Snapshot
from core.validate import check_cuts, check_snapshot

__all__ = ["Chain", "chain"]


@dataclass(frozen=True, slots=True)
class Chain:
    """Candidate boundaries in execution order and the costs of the segments between them.

    `segment_costs` has one entry more than `boundaries`: segment k ends at boundary k and the
    last one runs to the end of the model. `boundary_bytes[k]` is what crosses boundary k
    (None unless asked for). `merged` lists the candidates left out because nothing is
    computed between them and the previous boundary (a stage there would be empty).
    """

    boundaries: tuple[Cut, ...]
    segment_costs: tuple[float, ...]
    boundary_bytes: tuple[int, ...] | None = None
    merged: tuple[Cut, ...] = ()
    # The flat graph with the kept boundaries (for `core.fit`, which prices memory per range).
    flat: FlatGraph | None = field(default=None, compare=False, repr=False)


def chain(
    snapshot: Snapshot,
    cost: CostModel | Mapping[str, float],
    candidates: Candidates = None,
    *,
    with_bytes: bool = False,
) -> Chain:
    """The candidate boundaries of `snapshot`, in execution order, and the segment costs.

    Runs core's passes with every candidate as a cut (so bad candidates raise the same
    `CutError`s as `core.plan`), prices every node of the flat graph with `cost`, and sums
    the prices between consecutive boundary positions. With `with_bytes`, also the bytes of
    the values crossing each boundary (core's stage assignment and liveness).
    """
    model = _cost_model(cost, snapshot)
    check_snapshot(snapshot)
    cuts, calls = candidate_calls(snapshot, candidates)
    # Candidates called by the root graph need neither the cut checks nor inlining (core.chain_fast).
    flat = root_calls_flat(snapshot, cuts, calls) if calls is not None else root_level_flat(snapshot, cuts)
    if flat is None:
        flat = propagate(snapshot, check_cuts(snapshot, cuts))
    graph = flat.graph
    nodes = graph.nodes
    bounds = flat.boundaries
    if model is params and graph is snapshot.root.graph:
        prices = params_prices(snapshot, graph)
    else:
        prices = _prices(model, nodes, CostContext(snapshot, graph))
    edges = [0, *map(_position, bounds), len(nodes)]
    work = _busy(nodes, edges)
    # Keep a boundary only if something is computed since the previous kept one, and drop the
    # last one if nothing is computed after it: every choice of kept boundaries is then valid.
    kept: list[Boundary] | tuple[Boundary, ...]
    merged: list[Boundary] = []
    if bounds and all(work):  # the usual case: every segment computes something, all are kept
        kept, kept_flat = bounds, flat
    else:
        # Raw segment k is the work since boundary k-1; when that boundary was dropped, the
        # segment before it computed nothing, so boundary k is kept exactly when segment k computes.
        kept = [b for b, busy in zip(bounds, work) if busy]
        merged = [b for b, busy in zip(bounds, work) if not busy]
        if kept and not work[-1]:  # nothing computed after the last boundary
            merged.append(kept.pop())
        kept_flat = FlatGraph(graph, tuple(kept))
        edges = [0, *map(_position, kept), len(nodes)]
    crossing = _crossing_bytes(kept_flat) if with_bytes else None
    return Chain(
        tuple(map(_cut, kept)),
        _segment_sums(prices, edges),
        crossing,
        tuple(b.cut for b in sorted(merged, key=_position)),
        kept_flat,
    )


_position = attrgetter("position")
_cut = attrgetter("cut")
_op = attrgetter("op")
_MODULE_CALLS_COMPUTE = not any(op == "call_module" for op, _ in PROJECTIONS)  # every one is_compute


def _prices(model: CostModel, nodes: tuple[Node, ...], where: CostContext) -> list[float]:
    """The price of every node, in order, as floats (0.0 for free nodes). Checked in bulk when
    every price is a float or an int; otherwise (or when the model raises) node by node, so
    the error is the one of the first bad node, as the model meets them in order."""
    try:
        prices: list[float] = list(map(model, nodes, repeat(where)))
        kinds = set(map(type, prices))
        if kinds <= {float, int}:
            if int in kinds:
                prices = list(map(float, prices))
            if min(prices, default=0.0) >= 0.0 and math.isfinite(math.fsum(prices)):
                return prices  # no NaN, no infinity (the sum would be one), none negative
    except Exception:  # noqa: BLE001 - the pass below meets it again, in node order
        pass
    out: list[float] = []
    for node in nodes:
        price = model(node, where)
        if price:
            if not isinstance(price, (int, float)) or not 0.0 < price < math.inf:
                raise _bad_price(node, price)
            out.append(float(price))
        elif not isinstance(price, (int, float)) or price != 0.0:
            raise _bad_price(node, price)
        else:
            out.append(0.0)
    return out


def _busy(nodes: tuple[Node, ...], edges: list[int]) -> list[bool]:
    """For each segment nodes[edges[k]:edges[k+1]]: is something computed in it (`is_compute`)?"""
    if _MODULE_CALLS_COMPUTE and all(map(lt, edges[:-2], edges[1:-1])):
        # Every segment but the last is not empty: when each ends with a module call (candidates
        # "after" a call), all of those compute, and only the last one needs a look.
        ends = set(map(_op, map(nodes.__getitem__, map(sub, edges[1:-1], repeat(1)))))
        if ends <= {"call_module"}:
            return [*repeat(True, len(edges) - 2), *_busy_each(nodes, edges[-2:])]
    return _busy_each(nodes, edges)


def _busy_each(nodes: tuple[Node, ...], edges: list[int]) -> list[bool]:
    out = []
    for start, stop in zip(edges, edges[1:]):
        for i in range(start, stop):
            node = nodes[i]
            op = node.op
            if op.startswith("call_") and (op, node.target) not in PROJECTIONS:
                out.append(True)
                break
        else:
            out.append(False)
    return out


def _bad_price(node: Node, price: object) -> BalanceError:
    return BalanceError(
        f"cost of node {node.name!r} ({node.op} {node.target}) is {price!r}; "
        "a cost must be a finite number >= 0."
    )


def _segment_sums(prices: list[float], edges: list[int]) -> tuple[float, ...]:
    """The cost of each segment prices[edges[k]:edges[k+1]] (correctly rounded: `math.fsum`);
    the whole model's must be a finite float too, so that every sum of segments the partition
    forms is one."""
    try:
        sums = _sums(prices, edges)
        total = math.fsum(sums)
    except OverflowError:
        total = math.inf
    if not math.isfinite(total):
        raise BalanceError(
            "the node costs add up to more than a float can hold (over 1.8e308); scale the cost "
            "model down (for example seconds instead of nanoseconds)."
        )
    return tuple(map(add, sums, repeat(0.0)))  # a sum of zeros is 0.0, never -0.0


def _sums(prices: list[float], edges: list[int]) -> list[float]:
    """math.fsum of each prices[edges[k]:edges[k+1]]; a segment of one node (a block between two
    candidates) is its price, taken in C with the others, the longer ones summed after."""
    starts, stops = edges[:-1], edges[1:]
    sums = list(map(prices.__getitem__, map(min, starts, repeat(len(prices) - 1))))  # in range
    for k in compress(count(), map(ne, map(sub, stops, starts), repeat(1))):
        sums[k] = math.fsum(prices[starts[k] : stops[k]])
    return sums


def _crossing_bytes(flat: FlatGraph) -> tuple[int, ...]:
    """The bytes of the values crossing each boundary: those of `live_in` of the stage after it."""
    stages = assign_stages(flat)
    summed = _crossing_sums(flat, stages)
    if summed is not None:
        return summed
    graph: Graph = flat.graph
    live = live_in(graph, stages, len(flat.boundaries) + 1)
    out = []
    for k, boundary in enumerate(flat.boundaries):
        total = 0
        for name in live[k + 1]:
            info = graph.node(name).info
            if info is not None and info.nbytes is not None:
                total += info.nbytes
            elif info is None or info.kind not in ("scalar", "none"):
                raise BalanceError(
                    f"comm_weight needs the size of every value crossing a boundary, but "
                    f"{name!r} (crossing {boundary.cut}) has no byte count; make the snapshot "
                    "with shape propagation, or balance with comm_weight=0."
                )
        out.append(total)
    return tuple(out)


def _crossing_sums(flat: FlatGraph, stages: tuple[int, ...]) -> tuple[int, ...] | None:
    """`_crossing_bytes` without the lists of names: a value defined in stage d and last read in
    stage r (`live_in`'s backward pass) crosses boundaries d .. r-1, so its bytes are added at d
    and taken away at r, and a running sum gives each boundary's total. None when a value that
    crosses has no byte count (the lists then name the first one)."""
    graph = flat.graph
    nodes = graph.nodes
    position = graph.position
    last_read = [ANY_STAGE] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):  # as live_in
        reader = stages[i]
        if reader == ANY_STAGE:
            continue
        node = nodes[i]
        if node.kwargs is EMPTY_KWARGS:  # Node.inputs, without making its list
            for arg in node.args:
                kind = type(arg)
                if kind is Ref:
                    j = position(arg.name)  # type: ignore[union-attr]
                    if last_read[j] < reader:
                        last_read[j] = reader
                elif kind is tuple or kind is ListOf or kind is DictOf or kind is SliceOf:
                    for name in refs(arg):
                        j = position(name)
                        if last_read[j] < reader:
                            last_read[j] = reader
            continue
        for name in node.inputs():
            j = position(name)
            if last_read[j] < reader:
                last_read[j] = reader
    change = [0] * (len(flat.boundaries) + 2)
    for node, defined, last in zip(nodes, stages, last_read):
        if last > defined != ANY_STAGE:
            info = node.info
            if info is not None and info.nbytes is not None:
                change[defined] += info.nbytes
                change[last] -= info.nbytes
            elif info is None or info.kind not in ("scalar", "none"):
                return None
    return tuple(accumulate(change[: len(flat.boundaries)]))


def _cost_model(cost: CostModel | Mapping[str, float], snapshot: Snapshot) -> CostModel:
    model: CostModel
    if isinstance(cost, Mapping):
        model = by_module(cost)
    elif callable(cost):
        model = cost
    else:
        raise TypeError(
            f"cost={cost!r}: give a cost model (core.costs.params, core.costs.flops, ...) "
            "or a mapping from module path to cost."
        )
    if isinstance(model, ModuleCosts):
        unknown = model.unknown_paths(snapshot)
        if unknown:
            hint = UnknownPath(unknown[0], snapshot.modules.keys()).suggestions
            did = f" Did you mean {', '.join(repr(s) for s in hint)}?" if hint else ""
            raise BalanceError(
                f"the cost table names {len(unknown)} path(s) that are not modules of the "
                f"snapshot, first {unknown[0]!r}.{did}"
            )
        for path, value in model.costs.items():
            if not 0.0 <= value < math.inf:
                raise BalanceError(
                    f"the cost of module {path!r} is {value!r}; a cost must be a finite number >= 0."
                )
    return model
