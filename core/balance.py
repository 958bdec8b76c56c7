"""Automatic stage balancing: the cuts that make the most expensive stage as cheap as possible.

    cuts = balance(snapshot, 4, cost=costs.params)          # or costs.flops, a {path: cost} table
    plan(snapshot, cuts)

How it works, in three pure steps:

1. Candidates (`candidate_cuts`): the boundaries the balancer may choose, each "after module X".
   By default the calls of the children of the numbered module list that holds most of the
   model (``blocks.0 .. blocks.N``); or every call down to a call depth (``candidates=2``); or
   an explicit list of module paths.
2. The chain (`chain`): core's own passes (`check_cuts` + `propagate`) run with *every*
   candidate as a cut, giving the flat graph and the position of each candidate boundary in
   it. The cost model prices every node; the sum between consecutive boundaries is a segment
   cost, so the work before the first candidate (embeddings) joins the first segment and the
   work after the last (the head) the last one. With ``comm_weight``, stage assignment and
   liveness on that flat graph give the bytes crossing each boundary.
3. The partition (`partition_chain`): an exact min-max partition of the chain of segments into
   ``num_stages`` contiguous stages. Stage cost = sum of its segments + ``comm_weight`` x
   (bytes crossing its first boundary + bytes crossing its last). Among optimal partitions the
   one with the lexicographically smallest boundary positions is returned.

Exactness: every float is a dyadic rational, so all costs are turned into integers over one
common power of two and compared exactly; no epsilon, no rounding of sums. Stage costs are
reported as the correctly rounded floats of the exact values.

Algorithms (m segments, S stages):

- ``comm_weight == 0``: Nicol's parametric search over the candidate bottlenecks (prefix-sum
  differences P[e] - P[start]), stage by stage, with a greedy probe that jumps with bisection:
  O(m) to build the prefix sums, then O(S^2 log^2 m) at most, independent of the values.
  The probe is exact because splitting a stage never raises the maximum when costs are >= 0.
  The tie-break is a greedy from the right (the earliest start from which k stages suffice)
  followed by a pass from the left: O(S log m).
- ``comm_weight > 0``: a stage's cost depends on both its boundaries and is *not* monotone in
  its extent (a later boundary may carry fewer bytes), so the greedy probe is wrong there.
  Writing a stage i..j as U[j] - D[i] (U = P + link, D = P - link), a layered reachability
  probe decides "exactly S stages, each <= T" with prefix maxima, only over the positions that
  can end t stages at all (a window per t, narrow when communication is a small part of a
  stage): O(S W) per probe, W <= m. A seeded randomised search over the candidate values
  U[j] - D[i] (a sorted matrix) takes O(log m) probes in expectation, between the exact
  optimum without communication (a lower bound) and that split's cost with it (an upper
  bound). O(S m log m) expected in the worst case; the tie-break is O(S m).

Pricing: nodes are priced on the flat graph in which every candidate is a cut, so modules on
the way to a candidate are inlined. `flops` and `params` give a module (nearly) one price whole or
inlined; a table of module costs (`by_module`) prices modules that stay whole. Bytes crossing
a boundary are exact for the plan of the chosen cuts when its spine is the candidates' spine
(the usual case: the candidates are siblings); a plan with fewer cuts may inline less, and a
module's tuple output then crosses whole instead of item by item.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import sub

from core.assign import assign_stages
from core.costs import CostContext, CostModel, ModuleCosts, by_module
from core.cuts import Cut, CutLike, as_cut
from core.errors import BalanceError, UnknownPath
from core.graph import Graph, Node
from core.liveness import live_in
from core.propagate import Boundary, FlatGraph, propagate
from core.rules import is_compute
from core.snapshot import Module, Snapshot, join
from core.validate import check_cuts, check_snapshot

__all__ = [
    "Balance",
    "Candidates",
    "Chain",
    "ChainSplit",
    "balance",
    "balance_report",
    "candidate_cuts",
    "chain",
    "partition_chain",
]

Candidates = Sequence[CutLike] | int | None
"""None (numbered module list found automatically), a call depth, or explicit module paths."""


# ---------------------------------------------------------------------------
# results


@dataclass(frozen=True, slots=True)
class ChainSplit:
    """A partition of a chain: `cuts[i]` = index k of a chosen boundary (after segment k)."""

    cuts: tuple[int, ...]
    stage_costs: tuple[float, ...]

    @property
    def bottleneck(self) -> float:
        """The cost of the most expensive stage."""
        return max(self.stage_costs)


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


@dataclass(frozen=True, slots=True)
class Balance:
    """What `balance_report` found: the cuts, each stage's cost, and the chain it chose from."""

    cuts: tuple[Cut, ...]
    stage_costs: tuple[float, ...]
    chain: Chain

    @property
    def bottleneck(self) -> float:
        return max(self.stage_costs)

    @property
    def imbalance(self) -> float:
        """Most expensive stage over the mean stage (1.0 is perfect)."""
        mean = math.fsum(self.stage_costs) / len(self.stage_costs)
        return self.bottleneck / mean if mean > 0 else 1.0

    def __str__(self) -> str:
        starts = ["<start>", *(c.path for c in self.cuts)]
        ends = [*(c.path for c in self.cuts), "<end>"]
        lines = [f"{'stage':>5}  {'cost':>12}  from -> to"]
        for s, cost in enumerate(self.stage_costs):
            lines.append(f"{s:>5}  {cost:>12.6g}  {starts[s]} -> {ends[s]}")
        lines.append(f"max/mean {self.imbalance:.4f}; {len(self.chain.boundaries)} candidates")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# the public entry points


def balance(
    snapshot: Snapshot,
    num_stages: int,
    *,
    cost: CostModel | Mapping[str, float],
    candidates: Candidates = None,
    comm_weight: float = 0.0,
) -> tuple[Cut, ...]:
    """The `num_stages - 1` cuts, among `candidates`, that minimise the most expensive stage.

    `cost` is a cost model (`core.costs.params`, `core.costs.flops`, ...) or a table from
    module path to cost. `comm_weight` adds `comm_weight * bytes` for the values crossing a
    boundary to the stages on both of its sides (needs value info). The cuts come in
    execution order, ready for `core.plan`. Raises `BalanceError` (or a `CutError` for bad
    candidate paths), both `PlanError`s.
    """
    return balance_report(
        snapshot, num_stages, cost=cost, candidates=candidates, comm_weight=comm_weight
    ).cuts


def balance_report(
    snapshot: Snapshot,
    num_stages: int,
    *,
    cost: CostModel | Mapping[str, float],
    candidates: Candidates = None,
    comm_weight: float = 0.0,
) -> Balance:
    """`balance`, with the stage costs and the candidate chain it chose from."""
    _check_num_stages(num_stages)
    _check_comm_weight(comm_weight)
    model = _cost_model(cost, snapshot)
    found = chain(snapshot, model, candidates, with_bytes=comm_weight > 0)
    available = len(found.segment_costs)
    if num_stages > available:
        raise BalanceError(
            f"cannot make {num_stages} stages from {len(found.boundaries)} candidate boundaries "
            f"(at most {available} stages); give more candidates (candidates=<call depth> or "
            "a list of module paths) or ask for fewer stages."
        )
    split = partition_chain(
        found.segment_costs,
        num_stages,
        boundary_bytes=found.boundary_bytes,
        comm_weight=comm_weight,
    )
    return Balance(tuple(found.boundaries[k] for k in split.cuts), split.stage_costs, found)


# ---------------------------------------------------------------------------
# 1. candidates


def candidate_cuts(snapshot: Snapshot, candidates: Candidates = None) -> tuple[Cut, ...]:
    """The candidate boundaries: explicit paths, every call down to a depth, or automatic.

    Automatic (``None``): among the traced modules, the calls of sibling modules with numbered
    names (``blocks.0``, ``blocks.1``...; a ModuleList is not called itself, its children are
    called from the parent's graph) form groups. The group whose members hold the most
    parameter bytes wins (the deeper one on a tie); other groups outside it holding at least
    half as much join it (an encoder's and a decoder's blocks). Members called more than once
    are left out, and groups that cannot be cut are skipped. Without any group, every call of
    the root graph is a candidate (``candidates=1``).

    A depth ``d >= 1``: every module call at call depth 1..d (depth 1 = the calls of the root
    graph; depth 2 = also the calls inside traced modules called by the root, and so on), for
    modules called exactly once.
    """
    if candidates is None:
        return _automatic(snapshot)
    if isinstance(candidates, bool) or isinstance(candidates, int):
        if isinstance(candidates, bool) or candidates < 1:
            raise BalanceError(
                f"candidates={candidates!r}: a call depth must be an integer >= 1 "
                "(1 = every call of the root graph)."
            )
        return _down_to_depth(snapshot, candidates, _call_counts(snapshot))
    if isinstance(candidates, str):
        raise BalanceError(
            f"candidates={candidates!r}: give a sequence of module paths, not one string "
            f"(did you mean [{candidates!r}]?)."
        )
    return tuple(as_cut(c) for c in candidates)


def _call_counts(snapshot: Snapshot) -> dict[str, int]:
    """How many call_module nodes of the traced modules call each module."""
    counts: dict[str, int] = {}
    for module in snapshot.modules.values():
        if module.graph is not None:
            prefix = module.path
            for node in module.graph.nodes:
                if node.op == "call_module":
                    path = f"{prefix}.{node.target}" if prefix else node.target
                    counts[path] = counts.get(path, 0) + 1
    return counts


def _inlinable(module: Module) -> bool:
    return module.graph is not None and not any(
        p.target.startswith("*") for p in module.graph.placeholders
    )


def _down_to_depth(snapshot: Snapshot, depth: int, counts: Mapping[str, int]) -> tuple[Cut, ...]:
    out: list[Cut] = []
    modules = snapshot.modules

    def visit(owner: Module, level: int) -> None:
        assert owner.graph is not None
        for node in owner.graph.nodes:
            if node.op != "call_module":
                continue
            path = join(owner.path, node.target)
            if counts.get(path, 0) != 1 or path not in modules:
                continue  # a module called twice cannot be cut, at or inside it
            callee = modules[path]
            if level < depth and _inlinable(callee):
                visit(callee, level + 1)
            out.append(Cut(path))

    if snapshot.root.graph is not None:
        visit(snapshot.root, 1)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Group:
    container: str
    members: tuple[str, ...]
    weight: int
    order: int
    member_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "member_set", frozenset(self.members))

    def holds(self, path: str) -> bool:
        """Is `path` one of the members or below one? (O(depth of path))"""
        parts = path.split(".")
        return any(".".join(parts[:i]) in self.member_set for i in range(1, len(parts) + 1))


def _automatic(snapshot: Snapshot) -> tuple[Cut, ...]:
    counts = _call_counts(snapshot)
    calls, caller = _calls_in_execution_order(snapshot)
    found: dict[tuple[str, str], list[str]] = {}
    for owner, node in calls:
        prefix, _, last = node.target.rpartition(".")
        path = join(owner, node.target)
        if last.isdigit() and counts[path] == 1 and path in snapshot.modules:
            found.setdefault((owner, join(owner, prefix)), []).append(path)
    listed = [
        (order, container, unique)
        for order, ((owner, container), members) in enumerate(found.items())
        for unique in [tuple(dict.fromkeys(members))]
        # too small, or its caller cannot be inlined up to the root: not a candidate list
        if len(unique) >= 2 and _reaches_root(snapshot, owner, counts, caller)
    ]
    if len(listed) == 1:  # nothing to compare: skip weighing
        return tuple(Cut(m) for m in listed[0][2])
    any_params = any(module.params for module in snapshot.modules.values())
    groups = []
    for order, container, unique in listed:
        if any_params:
            keys: dict[str, int] = {}
            for member in unique:
                keys.update(_param_bytes(snapshot.modules[member]))
            weight = sum(keys.values())
        else:
            weight = len(unique)
        groups.append(_Group(container, unique, weight, order))
    groups.sort(key=lambda g: (-g.weight, -_depth(g.container), -len(g.members), g.order))
    chosen: list[_Group] = []
    for group in groups:
        if chosen and 2 * group.weight < chosen[0].weight:
            break
        if any(c.holds(group.container) or group.holds(c.container) for c in chosen):
            continue
        chosen.append(group)
    if not chosen:
        return _down_to_depth(snapshot, 1, counts)
    return tuple(Cut(m) for g in sorted(chosen, key=lambda g: g.order) for m in g.members)


def _reaches_root(
    snapshot: Snapshot, owner: str, counts: Mapping[str, int], caller: Mapping[str, str]
) -> bool:
    """Can `owner` be inlined up to the root (each module on the way called once, inlinable)?"""
    path = owner
    while path:
        if counts.get(path, 0) != 1 or path not in caller or not _inlinable(snapshot.modules[path]):
            return False
        path = caller[path]
    return True


def _param_bytes(module: Module) -> dict[str, int]:
    """Storage key -> bytes of the parameters (not buffers) of `module` and below."""
    out: dict[str, int] = {}
    stack = [module]
    while stack:
        here = stack.pop()
        for param in here.params.values():
            if not param.buffer:
                out[param.key] = param.nbytes
        if here.children:
            stack.extend(here.children.values())
    return out


def _calls_in_execution_order(snapshot: Snapshot) -> tuple[list[tuple[str, Node]], dict[str, str]]:
    """(caller path, call_module node) of every traced module reached from the root, in the
    order the calls run (a callee's own calls come right after its call), and the caller of
    every module called (the first, for a module called more than once)."""
    out: list[tuple[str, Node]] = []
    caller: dict[str, str] = {}
    stack: list[tuple[Module, int]] = []
    if snapshot.root.graph is not None:
        stack.append((snapshot.root, 0))
    while stack:  # an explicit stack: module trees can be deep
        owner, index = stack.pop()
        assert owner.graph is not None
        nodes = owner.graph.nodes
        while index < len(nodes):
            node = nodes[index]
            index += 1
            if node.op != "call_module":
                continue
            out.append((owner.path, node))
            path = join(owner.path, node.target)
            callee = snapshot.modules.get(path)
            if path in caller or callee is None:
                continue
            caller[path] = owner.path
            if callee.graph is not None:
                stack.append((owner, index))
                stack.append((callee, 0))
                break
    return out, caller


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


# ---------------------------------------------------------------------------
# 2. the chain of segment costs


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
    cuts = candidate_cuts(snapshot, candidates)
    spine = check_cuts(snapshot, cuts)
    flat = propagate(snapshot, spine)
    graph = flat.graph
    bounds = flat.boundaries
    positions = [b.position for b in bounds]
    raw = len(bounds) + 1
    prices: list[list[float]] = [[] for _ in range(raw)]
    work = [False] * raw
    where = CostContext(snapshot, graph)
    segment = 0
    for i, node in enumerate(graph.nodes):
        while segment < len(positions) and positions[segment] <= i:
            segment += 1
        price = model(node, where)
        if not isinstance(price, (int, float)) or not 0.0 <= price < math.inf:
            raise BalanceError(
                f"cost of node {node.name!r} ({node.op} {node.target}) is {price!r}; "
                "a cost must be a finite number >= 0."
            )
        if price:
            prices[segment].append(float(price))
        if is_compute(node):
            work[segment] = True
    # Keep a boundary only if something is computed since the previous kept one, and drop the
    # last one if nothing is computed after it: every choice of kept boundaries is then valid.
    kept: list[Boundary] = []
    merged: list[Boundary] = []
    groups: list[list[float]] = [[]]
    busy = False
    for k in range(raw):
        groups[-1].extend(prices[k])
        busy = busy or work[k]
        if k < len(bounds):
            if busy:
                kept.append(bounds[k])
                groups.append([])
                busy = False
            else:
                merged.append(bounds[k])
    if kept and not busy:
        merged.append(kept.pop())
        tail = groups.pop()
        groups[-1].extend(tail)
    crossing = _crossing_bytes(FlatGraph(graph, tuple(kept))) if with_bytes else None
    return Chain(
        tuple(b.cut for b in kept),
        tuple(math.fsum(g) for g in groups),
        crossing,
        tuple(b.cut for b in sorted(merged, key=lambda b: b.position)),
    )


def _crossing_bytes(flat: FlatGraph) -> tuple[int, ...]:
    graph: Graph = flat.graph
    stages = assign_stages(flat)
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


def _cost_model(cost: CostModel | Mapping[str, float], snapshot: Snapshot) -> CostModel:
    model: CostModel
    if isinstance(cost, Mapping):
        model = by_module(cost)
    elif callable(cost):
        model = cost
    else:
        raise BalanceError(
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


# ---------------------------------------------------------------------------
# 3. the exact chain partition


def partition_chain(
    costs: Sequence[float],
    num_stages: int,
    *,
    boundary_bytes: Sequence[float] | None = None,
    comm_weight: float = 0.0,
) -> ChainSplit:
    """The optimal split of a chain of segment costs into `num_stages` contiguous stages.

    Minimises the most expensive stage, where a stage made of segments i..j costs
    ``sum(costs[i..j]) + comm_weight * (boundary_bytes[i-1] + boundary_bytes[j])`` (the terms
    for the start and the end of the chain are zero). Exact: values are compared as exact
    rationals. Ties go to the lexicographically smallest boundaries. Boundary k lies between
    segments k and k+1; the result lists the chosen ones in increasing order.
    """
    _check_num_stages(num_stages)
    _check_comm_weight(comm_weight)
    m = len(costs)
    if m == 0:
        raise BalanceError("the chain has no segment: there is nothing to split.")
    if num_stages > m:
        raise BalanceError(
            f"cannot make {num_stages} stages from {m - 1} candidate boundaries "
            f"(at most {m} stages); give more candidates or ask for fewer stages."
        )
    if boundary_bytes is not None and len(boundary_bytes) != m - 1:
        raise BalanceError(
            f"boundary_bytes has {len(boundary_bytes)} entries; a chain of {m} segments has "
            f"{m - 1} boundaries."
        )
    ratios = [_ratio(c, f"cost of segment {k}") for k, c in enumerate(costs)]
    comm = boundary_bytes is not None and comm_weight > 0
    extra: list[tuple[int, int]] = []
    if comm:
        assert boundary_bytes is not None
        wn, wd = comm_weight.as_integer_ratio()
        for k, b in enumerate(boundary_bytes):
            bn, bd = _ratio(b, f"bytes crossing boundary {k}")
            extra.append((wn * bn, wd * bd))
    shift = max(d.bit_length() - 1 for _, d in [*ratios, *extra])
    weights = [n << (shift - d.bit_length() + 1) for n, d in ratios]
    prefix = [0, *accumulate(weights)]
    scale = 1 << shift
    if comm and any(n for n, _ in extra):
        link = [0, *(n << (shift - d.bit_length() + 1) for n, d in extra), 0]
        positions = _split_with_links(prefix, link, num_stages)
    else:
        link = [0] * (m + 1)
        positions = _split_plain(prefix, num_stages)
    bounds = [0, *positions, m]
    exact = [
        prefix[b] - prefix[a] + link[a] + link[b] for a, b in zip(bounds, bounds[1:])
    ]
    return ChainSplit(tuple(p - 1 for p in positions), tuple(e / scale for e in exact))


def _ratio(value: float, what: str) -> tuple[int, int]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BalanceError(f"{what} is {value!r}; it must be a number.") from None
    if isinstance(value, float) and not math.isfinite(value) or value < 0:
        raise BalanceError(f"{what} is {value!r}; it must be a finite number >= 0.")
    return value.as_integer_ratio()


def _check_num_stages(num_stages: int) -> None:
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise BalanceError(f"num_stages={num_stages!r}: it must be an integer >= 1.")


def _check_comm_weight(comm_weight: float) -> None:
    if (
        isinstance(comm_weight, bool)
        or not isinstance(comm_weight, (int, float))
        or not math.isfinite(comm_weight)
        or comm_weight < 0
    ):
        raise BalanceError(f"comm_weight={comm_weight!r}: it must be a finite number >= 0.")


# -- without communication: Nicol's search with a bisecting greedy probe


def _fits(prefix: list[int], start: int, stages: int, limit: int) -> bool:
    """Can segments start.. be split into at most `stages` stages each costing <= limit?"""
    m = len(prefix) - 1
    i = start
    for _ in range(stages):
        j = bisect_right(prefix, prefix[i] + limit, i, m + 1) - 1
        if j >= m:
            return True
        if j == i:
            return False
        i = j
    return False


def _bottleneck_plain(prefix: list[int], num_stages: int) -> int:
    """The optimal maximum stage cost (Nicol's algorithm; exact with integers)."""
    m = len(prefix) - 1
    total = prefix[m]
    widest = max(map(sub, prefix[1:], prefix[:-1]))
    lower = max(widest, -(-total // num_stages))
    upper = total // num_stages + widest + 1  # the greedy with this limit needs <= S stages
    best: int | None = None
    start = 0
    for stages in range(num_stages, 1, -1):
        # The smallest first-stage end e whose cost is a feasible bottleneck for start.., if any
        # in [start + 1, top]; `top` leaves one segment to each later stage.
        top = m - stages + 1
        base = prefix[start]
        lo = max(start + 1, bisect_left(prefix, base + lower, start + 1, m + 1))
        end: int | None = None
        if lo <= top:
            hint = min(top, max(lo, bisect_left(prefix, base + upper, lo, top + 1)))
            if _fits(prefix, start, stages, prefix[hint] - base):
                hi = hint
            elif hint < top and _fits(prefix, start, stages, prefix[top] - base):
                lo, hi = hint + 1, top
            else:
                lo = hi = -1
            if hi >= 0:
                while lo < hi:
                    mid = (lo + hi) // 2
                    if _fits(prefix, start, stages, prefix[mid] - base):
                        hi = mid
                    else:
                        lo = mid + 1
                end = hi
        if end is None:  # the bottleneck lies further on: this stage takes all it may
            start = top
            continue
        value = prefix[end] - base
        best = value if best is None else min(best, value)
        if end == start + 1:  # one segment is a lower bound of the optimum: done
            return best
        start = end - 1
    value = total - prefix[start]
    return value if best is None else min(best, value)


def _split_plain(prefix: list[int], num_stages: int) -> list[int]:
    """Optimal boundary positions (1..m-1), lexicographically smallest among optimal ones."""
    m = len(prefix) - 1
    if num_stages == 1:
        return []
    limit = _bottleneck_plain(prefix, num_stages)
    # reach[k]: the smallest start from which the rest fits in k stages (greedy from the right).
    reach = [m]
    for _ in range(num_stages - 1):
        last = reach[-1]
        reach.append(0 if last == 0 else bisect_left(prefix, prefix[last] - limit, 0, last))
    positions: list[int] = []
    previous = 0
    for t in range(1, num_stages):
        previous = max(reach[num_stages - t], previous + 1)
        positions.append(previous)
    return positions


# -- with communication: layered reachability and a search over the sorted matrix U - D


def _split_with_links(prefix: list[int], link: list[int], num_stages: int) -> list[int]:
    """As `_split_plain`, where a stage a..b (positions) costs P[b]-P[a] + link[a] + link[b]."""
    m = len(prefix) - 1
    if num_stages == 1:
        return []
    if num_stages == m:
        return list(range(1, m))
    up = [p + x for p, x in zip(prefix, link)]  # cost of a..b = up[b] - down[a]
    down = [p - x for p, x in zip(prefix, link)]

    def worst(positions: list[int]) -> int:
        b = [0, *positions, m]
        return max(up[j] - down[i] for i, j in zip(b, b[1:]))

    lower = _bottleneck_plain(prefix, num_stages)  # links only add cost
    upper = worst(_split_plain(prefix, num_stages))  # a feasible value
    rng = random.Random(0x5EED)
    # A stage of a split within `upper` starts and ends at positions of the windows (see
    # `_reachable`), so only those rows (stage ends) and columns (starts) are looked at.
    inner = _window_positions(prefix, num_stages, upper)
    rows = sorted([up[j] for j in inner] + [up[m]])
    cols = sorted([-down[i] for i in inner] + [-down[0]])  # value = row + col, ascending
    while lower < upper:
        # Candidate values v with lower <= v < upper; the optimum is one of them or `upper`.
        spans = [
            (bisect_left(cols, lower - r), bisect_left(cols, upper - r)) for r in rows
        ]
        total = sum(b - a for a, b in spans)
        if total == 0:
            break
        if 4 * sum(1 for a, b in spans if b > a) < len(rows):  # drop rows out of the range
            rows = [r for r, (a, b) in zip(rows, spans) if b > a]
            spans = [(a, b) for a, b in spans if b > a]
        pick = rng.randrange(total)
        row = 0
        while pick >= spans[row][1] - spans[row][0]:
            pick -= spans[row][1] - spans[row][0]
            row += 1
        value = rows[row] + cols[spans[row][0] + pick]
        if _reachable(prefix, up, down, num_stages, value):
            upper = value
        else:
            lower = value + 1
    return _earliest_with_links(prefix, up, down, num_stages, upper)


def _window_positions(prefix: list[int], num_stages: int, limit: int) -> list[int]:
    """The positions 1..m-1 that can end t stages (for some t) of a split within `limit`."""
    m = len(prefix) - 1
    total = prefix[m]
    out: list[int] = []
    last = 0
    for t in range(1, num_stages):  # the windows move right as t grows
        rest = num_stages - t
        lo = max(t, last + 1, bisect_left(prefix, total - rest * limit))
        hi = min(m - rest, bisect_right(prefix, t * limit) - 1)
        if lo <= hi:
            out.extend(range(lo, hi + 1))
            last = hi
    return out


def _reachable(
    prefix: list[int], up: list[int], down: list[int], num_stages: int, limit: int
) -> bool:
    """Is there a split into exactly `num_stages` stages each costing <= limit? O(S m).

    Layer t holds, for every position j that can end exactly t stages, down[j] (else -inf);
    j joins layer t+1's successors k when max(layer t over j < k) >= up[k] - limit. Only
    positions inside a window can be on such a split: the t stages before j cost at least
    P[j], the S - t after at least P[m] - P[j], each <= limit.
    """
    m = len(up) - 1
    never = -math.inf
    total = prefix[m]
    first = 0
    layer: list[float] = [down[0]]  # layer t covers positions first .. first+len-1
    for t in range(1, num_stages):
        rest = num_stages - t
        lo = max(t, bisect_left(prefix, total - rest * limit))
        hi = min(m - rest, bisect_right(prefix, t * limit) - 1)
        if lo > hi:
            return False
        best = list(accumulate(layer, max))
        if best[-1] == never:  # the previous layer is empty
            return False
        # reach[k] for k in lo..hi is best[k - 1 - first], clamped to the layer.
        k0, k1, size = lo - 1 - first, hi - 1 - first, len(best)
        reach: list[float] = [never] * max(0, min(k1, -1) - k0 + 1)
        if max(k0, 0) <= min(k1, size - 1):
            reach += best[max(k0, 0) : min(k1, size - 1) + 1]
        reach += [best[-1]] * max(0, k1 - max(k0, size) + 1)
        # (r may be -inf, a float: compared with ints exactly, never added to a huge int)
        layer = [
            d if r >= u - limit else never
            for d, r, u in zip(down[lo : hi + 1], reach, up[lo : hi + 1])
        ]
        first = lo
    return max(layer) >= up[m] - limit


def _earliest_with_links(
    prefix: list[int], up: list[int], down: list[int], num_stages: int, limit: int
) -> list[int]:
    """The lexicographically smallest positions of a split with every stage <= limit.

    Backwards, level k marks the positions (in their window, as in `_reachable`) that can
    reach the end in exactly k stages; forwards, each boundary is the first position after
    the previous one that the previous one reaches within `limit` and that can still finish.
    """
    m = len(up) - 1
    never = math.inf
    total = prefix[m]
    levels: list[tuple[int, list[bool]]] = [(m, [True])]  # (first position, flags)
    first = m
    nearest: list[float] = [up[m]]  # up[j] of the positions that can finish, else inf
    for k in range(1, num_stages):
        lo = max(num_stages - k, bisect_left(prefix, total - k * limit))
        hi = min(m - k, bisect_right(prefix, (num_stages - k) * limit) - 1)
        tail = list(accumulate(reversed(nearest), min))[::-1]  # min over j >= index
        q0, q1, size = lo + 1 - first, hi + 1 - first, len(tail)
        after: list[float] = [tail[0]] * max(0, min(q1, -1) - q0 + 1)
        if max(q0, 0) <= min(q1, size - 1):
            after += tail[max(q0, 0) : min(q1, size - 1) + 1]
        after += [never] * max(0, q1 - max(q0, size) + 1)
        flags = [a <= d + limit for a, d in zip(after, down[lo : hi + 1])]
        levels.append((lo, flags))
        first = lo
        nearest = [u if f else never for u, f in zip(up[lo : hi + 1], flags)]
    positions: list[int] = []
    here = 0
    for t in range(1, num_stages):
        start, flags = levels[num_stages - t]
        j = max(here + 1, start)
        while not (flags[j - start] and up[j] - down[here] <= limit):
            j += 1
        positions.append(j)
        here = j
    assert up[m] - down[here] <= limit
    return positions
