"""Memory-aware balancing: the cuts that minimise the most expensive stage while every stage's
peak memory stays under a cap, exactly.

    split = fit(found, snapshot, 4, max_memory=80e9, training=Training("1f1b", 8, "adam"))

`core.balance(..., max_memory=...)` is the entry point; this file holds the two pieces:

- `RangeMemory`: the peak memory (`core.figures`' definition: weights, gradients, optimizer
  state, the engine's receive buffers, in-flight microbatches x activations held) of the stage
  made of the candidate segments i..j-1, for every range, exactly as `core.figures` gives it
  for the plan of those cuts (when the cuts' spine is the candidates', as for sibling blocks).
  Activations come from `core.saved.RangeSaved`, one interpreter pass per start; weights from a
  running union of the parameter storages (a tied weight counts once per stage); the receive
  buffers from what crosses the two boundaries. Stage t holds `in_flight[t]` microbatches
  under the schedule, so the same range costs more memory early in a 1F1B pipeline.
- `fit_partition`: exact min-max over a chain with a per-stage constraint that is not monotone
  (a later boundary may carry fewer bytes). "Can the chain be split into S stages, each within
  bottleneck T and memory cap C?" is a layered reachability from the end (which positions can
  finish with t stages), evaluating only ranges whose cost can be within T. The optimum is the
  smallest feasible T among the ranges' costs: feasibility is monotone in T, the unconstrained
  optimum (`core.partition`) is a lower bound, and a galloping search brackets it before a
  bisection over the range costs inside the bracket. Ties go to the lexicographically smallest
  boundaries (a greedy pass forward over the reachable positions). Costs are compared as exact
  integers, as in `core.partition`; memory is in whole bytes.

When no cut set fits at any bottleneck, `BalanceError` names the smallest achievable peak
(an exact min-max over partitions of the stages' peaks) and the stage that sets it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from core.comm import grad_bytes, wire_bytes
from core.errors import BalanceError
from core.memory import check_dtype, check_optimizer, param_bytes
from core.partition import ChainSplit, partition_chain
from core.saved import LeafSaved, RangeSaved
from core.schedules import check, default_ranks, in_flight, rank_actions
from core.snapshot import Param, Snapshot

__all__ = ["Fit", "RangeMemory", "Training", "fit_partition", "human_bytes"]


@dataclass(frozen=True, slots=True)
class Training:
    """How the pipeline is trained: what the memory figures depend on (see `core.figures`)."""

    schedule: str = "1f1b"
    microbatches: int = 4
    optimizer: str = "adam"
    dtype: str | None = None
    ranks: int | None = None  # default: `core.schedules.default_ranks`
    measured: Mapping[str, Sequence[LeafSaved]] | None = field(default=None, compare=False, hash=False)

    def check(self) -> None:
        check_optimizer(self.optimizer)
        check_dtype(self.dtype)


@dataclass(frozen=True, slots=True)
class Fit:
    """A memory-feasible split: the chain split and each stage's peak memory in bytes."""

    split: ChainSplit
    peaks: tuple[int, ...]


class RangeMemory:
    """Peak memory of the stage made of candidate segments i..j-1 (module doc)."""

    def __init__(self, flat: object, snapshot: Snapshot, training: Training) -> None:
        training.check()
        self.training = training
        self.saved = RangeSaved(flat, snapshot, measured=training.measured, dtype=training.dtype)
        self.count = self.saved.count  # segments
        graph = self.saved.graph
        dtype = training.dtype
        # per boundary k (1..count-1): bytes forward and gradient bytes back, per microbatch
        self.forward: list[int | None] = [0] * (self.count + 1)
        self.back: list[int | None] = [0] * (self.count + 1)
        for k in range(1, self.count):
            infos = [graph.node(n).info for n in self.saved.live[k]]
            fwd = [wire_bytes(i, dtype) for i in infos]
            bwd = [grad_bytes(i, dtype) for i in infos]
            self.forward[k] = None if None in fwd else sum(v or 0 for v in fwd)
            self.back[k] = None if None in bwd else sum(v or 0 for v in bwd)
        # parameter storages each segment holds: what `core.plan` lists as the stage's params
        self.params: list[dict[str, Param]] = []
        for nodes in self.saved.segments:
            found: dict[str, Param] = {}
            for node in nodes:
                if node.op == "call_module":
                    for _, param in snapshot.params_under(node.target):
                        found.setdefault(param.key, param)
                for name in node.inputs():
                    source = graph.node(name)
                    if source.op == "get_attr":
                        read = snapshot.param(source.target)
                        if read is not None:
                            found.setdefault(read.key, read)
            self.params.append(found)
        self._static: dict[int, tuple[set[str], list[int]]] = {}
        self._param_bytes: dict[str, int] = {}

    def static(self, start: int, stop: int) -> list[int]:
        """Weights, buffers, gradients and optimizer state of stages start..j, j = start+1..stop
        (each start's running union kept and extended when a longer range is asked for)."""
        found = self._static.get(start)
        if found is None:
            found = self._static[start] = (set(), [])
        seen, out = found
        total = out[-1] if out else 0
        for k in range(start + len(out), stop):
            for key, param in self.params[k].items():
                if key not in seen:
                    seen.add(key)
                    total += self._bytes(key, param)
            out.append(total)
        return out[: stop - start]

    def _bytes(self, key: str, param: Param) -> int:
        found = self._param_bytes.get(key)
        if found is None:
            found = self._param_bytes[key] = sum(param_bytes(param, self.training.optimizer, self.training.dtype))
        return found

    def peaks(self, flight: int, start: int, stop: int) -> list[int | None]:
        """Peak bytes of stages start..j (j = start+1..stop) holding `flight` microbatches."""
        mbs = self.training.microbatches
        held = self.saved.held(start, stop)
        static = self.static(start, stop)
        received = self.forward[start] if start > 0 else 0
        out: list[int | None] = []
        for offset, (h, w) in enumerate(zip(held, static)):
            end = start + 1 + offset
            back = self.back[end] if end < self.count else 0
            if h is None or received is None or back is None:
                out.append(None)
            else:
                out.append(w + mbs * (received + back) + flight * h)
        return out

    def in_flight(self, num_stages: int) -> tuple[int, ...]:
        t = self.training
        ranks = default_ranks(t.schedule, num_stages) if t.ranks is None else t.ranks
        check(t.schedule, num_stages, ranks, t.microbatches)
        return in_flight(rank_actions(t.schedule, num_stages, ranks, t.microbatches), num_stages)


def _ints(costs: Sequence[float], boundary_bytes: Sequence[float] | None, comm_weight: float) -> tuple[list[int], list[int], int]:
    """Prefix sums and boundary link costs as exact integers over one power of two."""
    ratios = [float(c).as_integer_ratio() for c in costs]
    extra: list[tuple[int, int]] = []
    if boundary_bytes is not None and comm_weight > 0:
        wn, wd = comm_weight.as_integer_ratio()
        for b in boundary_bytes:
            bn, bd = float(b).as_integer_ratio()
            extra.append((wn * bn, wd * bd))
    shift = max(d.bit_length() - 1 for _, d in [*ratios, *extra, (0, 1)])
    prefix = [0, *accumulate(n << (shift - d.bit_length() + 1) for n, d in ratios)]
    link = [0] * (len(costs) + 1)
    for k, (n, d) in enumerate(extra, start=1):
        link[k] = n << (shift - d.bit_length() + 1)
    return prefix, link, 1 << shift


def fit_partition(
    costs: Sequence[float],
    num_stages: int,
    max_memory: int,
    peaks: Callable[[int, int, int], list[int | None]],
    *,
    boundary_bytes: Sequence[float] | None = None,
    comm_weight: float = 0.0,
    describe: Callable[[int], str] = str,
) -> Fit:
    """The optimal split of a chain into `num_stages` stages with every stage's peak memory
    `<= max_memory` (module doc). `peaks(t, i, j_stop)` gives the peaks of stage t made of
    segments i..j-1 for j = i+1..j_stop (`RangeMemory.peaks` with stage t's in-flight count);
    `describe(k)` names boundary k in error messages."""
    m = len(costs)
    prefix, link, scale = _ints(costs, boundary_bytes, comm_weight)

    def cost(i: int, j: int) -> int:
        return prefix[j] - prefix[i] + link[i] + link[j]

    cache: dict[tuple[int, int], list[int | None]] = {}

    def peak_row(t: int, i: int, stop: int) -> list[int | None]:
        row = cache.get((t, i))
        if row is None or len(row) < stop - i:
            row = peaks(t, i, stop)
            cache[(t, i)] = row
        return row

    def reach_end(limit: int) -> list[set[int]] | None:
        """can[t]: the positions from which stages t..S-1 fit (cost <= limit, memory <= cap)."""
        can: list[set[int]] = [set() for _ in range(num_stages + 1)]
        can[num_stages] = {m}
        for t in range(num_stages - 1, -1, -1):
            later = sorted(can[t + 1])
            if not later:
                return None
            first, last = (0, 0) if t == 0 else (t, m - (num_stages - t))
            for i in range(first, last + 1):
                stop = min(m - (num_stages - t - 1), bisect_right(prefix, prefix[i] + limit) - 1)
                # only ends from which the rest can finish: the pass from i goes as far as the last
                ends = later[bisect_right(later, i) : bisect_right(later, stop)]
                if not ends:
                    continue
                row = peak_row(t, i, ends[-1])
                for j in ends:
                    if cost(i, j) <= limit:
                        p = row[j - i - 1]
                        if p is None:
                            raise BalanceError(
                                "max_memory needs the bytes of every value the stages keep, but the "
                                f"snapshot lacks value info between {describe(i - 1)} and {describe(j - 1)}; "
                                "make the snapshot with example inputs."
                            )
                        if p <= max_memory:
                            can[t].add(i)
                            break
        return can if 0 in can[0] else None

    # The unconstrained optimum is a lower bound; its split's cost an exact integer.
    free = partition_chain(costs, num_stages, boundary_bytes=boundary_bytes, comm_weight=comm_weight)
    bounds = [0, *(k + 1 for k in free.cuts), m]
    low = max(cost(a, b) for a, b in zip(bounds, bounds[1:]))
    top = prefix[m] + 2 * max(link)
    found = reach_end(low)
    best = low
    if found is None:
        # Gallop up from the lower bound (the largest bottleneck last: it prices every range),
        # then bisect over the range costs in the bracket.
        gap = max(1, (top - low) >> 20)
        lo, hi = low, min(top, low + gap)
        while reach_end(hi) is None:
            if hi >= top:
                raise _no_fit(m, num_stages, max_memory, peak_row, describe)
            lo, gap = hi, gap * 2
            hi = min(top, hi + gap)
        values = sorted({cost(i, j) for i in range(m) for j in range(i + 1, m + 1) if lo < cost(i, j) <= hi})
        a, b = 0, len(values) - 1
        while a < b:
            mid = (a + b) // 2
            if reach_end(values[mid]) is not None:
                b = mid
            else:
                a = mid + 1
        best = values[a]
        found = reach_end(best)
        assert found is not None
    # The lexicographically smallest boundaries: from each stage's start, the first end that
    # fits and from which the rest can finish.
    positions: list[int] = []
    start = 0
    chosen_peaks: list[int] = []
    for t in range(num_stages):
        stop = min(m - (num_stages - t - 1), bisect_right(prefix, prefix[start] + best) - 1)
        row = peak_row(t, start, stop)
        for j in range(start + 1, stop + 1):
            p = row[j - start - 1]
            if j in found[t + 1] and cost(start, j) <= best and p is not None and p <= max_memory:
                chosen_peaks.append(p)
                if t < num_stages - 1:
                    positions.append(j)
                start = j
                break
        else:  # pragma: no cover - reach_end said it can
            raise AssertionError("no end found for a reachable start")
    edges = [0, *positions, m]
    stage_costs = tuple(cost(a, b) / scale for a, b in zip(edges, edges[1:]))
    return Fit(ChainSplit(tuple(p - 1 for p in positions), stage_costs), tuple(chosen_peaks))


def _no_fit(
    m: int,
    num_stages: int,
    max_memory: int,
    peak_row: Callable[[int, int, int], list[int | None]],
    describe: Callable[[int], str],
) -> BalanceError:
    """The error when no split fits: the smallest achievable peak, by an exact min-max DP."""
    inf = math.inf
    # best[t][j]: the smallest max peak of stages 0..t-1 covering segments 0..j-1
    best: list[list[float]] = [[inf] * (m + 1) for _ in range(num_stages + 1)]
    came: list[list[int]] = [[-1] * (m + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0
    for t in range(num_stages):
        for i in range(m):
            if best[t][i] == inf:
                continue
            stop = m - (num_stages - t - 1)
            if stop <= i:
                continue
            row = peak_row(t, i, stop)
            for j in range(i + 1, stop + 1):
                p = row[j - i - 1]
                if p is None:
                    continue
                value = max(best[t][i], p)
                if value < best[t + 1][j]:
                    best[t + 1][j] = value
                    came[t + 1][j] = i
    smallest = best[num_stages][m]
    if smallest == inf:
        return BalanceError(
            "max_memory needs the bytes of every value the stages keep, but the snapshot lacks value "
            "info; make the snapshot with example inputs."
        )
    # Walk back to name the stage that sets the peak.
    ends = [m]
    for t in range(num_stages, 0, -1):
        ends.append(came[t][ends[-1]])
    ends.reverse()
    worst_stage = 0
    for t in range(num_stages):
        row = peak_row(t, ends[t], ends[t + 1])
        if row[ends[t + 1] - ends[t] - 1] == smallest:
            worst_stage = t
    cuts = ", ".join(describe(e - 1) for e in ends[1:-1]) or "none"
    return BalanceError(
        f"no choice of {num_stages - 1} cuts keeps every stage's peak memory under "
        f"{human_bytes(max_memory)}: the smallest achievable peak is {human_bytes(int(smallest))} "
        f"({int(smallest)} bytes, stage {worst_stage}, with cuts {cuts}); raise the cap to at "
        "least that, use more stages, fewer microbatches in flight (another schedule or "
        "microbatch count), or a lighter optimizer state or dtype."
    )


def human_bytes(n: int) -> str:
    """Bytes with a decimal unit, as the plan table shows them: 568.0kB, 80.0GB."""
    from core.table import human

    return human(n, "B")
