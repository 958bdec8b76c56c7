"""The exact chain partition: segment costs in, the min-max split into contiguous stages out.

    partition_chain([3.0, 1.0, 2.0, 2.0], 2)     # ChainSplit(cuts=(1,), stage_costs=(4.0, 4.0))

Just numbers: no snapshot, no graph (`core.chain` makes the chain from a snapshot). Stage
cost = sum of its segments + ``comm_weight`` x (bytes crossing its first boundary + bytes
crossing its last). Among optimal partitions the one with the lexicographically smallest
boundary positions is returned.

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
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import add, itemgetter, lshift, mul, sub
from typing import cast

from core.errors import BalanceError

__all__ = ["ChainSplit", "check_comm_weight", "check_num_stages", "partition_chain"]


@dataclass(frozen=True, slots=True)
class ChainSplit:
    """A partition of a chain: `cuts[i]` = index k of a chosen boundary (after segment k)."""

    cuts: tuple[int, ...]
    stage_costs: tuple[float, ...]

    @property
    def bottleneck(self) -> float:
        """The cost of the most expensive stage."""
        return max(self.stage_costs)


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
    check_num_stages(num_stages)
    check_comm_weight(comm_weight)
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
    integral = False  # every cost a whole float (bytes, counts): c = int(c) / 1
    if _plain_floats(costs):  # the usual chain: no checks to make
        integral = all(map(float.is_integer, costs))
        ratios = [] if integral else list(map(float.as_integer_ratio, costs))
    else:
        ratios = [_ratio(c, f"cost of segment {k}") for k, c in enumerate(costs)]
    comm = boundary_bytes is not None and comm_weight > 0
    extra: list[tuple[int, int]] = []  # comm_weight x bytes of each boundary, as a ratio
    whole_bytes = False  # every boundary's bytes an int >= 0: extra[k] = (wn * bytes[k], wd)
    if comm:
        assert boundary_bytes is not None
        wn, wd = comm_weight.as_integer_ratio()
        whole_bytes = set(map(type, boundary_bytes)) <= {int} and min(boundary_bytes, default=0) >= 0
        if not whole_bytes:
            for k, b in enumerate(boundary_bytes):
                bn, bd = _ratio(b, f"bytes crossing boundary {k}")
                extra.append((wn * bn, wd * bd))
    # Every value over one power of two: n/d as n << (shift - log2 d) over 2**shift (C maps).
    shift = max(map(int.bit_length, map(_second, [*ratios, *extra])), default=1) - 1
    if whole_bytes:
        shift = max(shift, wd.bit_length() - 1)
    weights = list(map(lshift, map(int, costs), repeat(shift))) if integral else _scaled(ratios, shift)
    prefix = [0, *accumulate(weights)]
    scale = 1 << shift
    if whole_bytes and wn and boundary_bytes is not None and any(boundary_bytes):
        link = [0, *map(mul, repeat(wn << (shift + 1 - wd.bit_length())), boundary_bytes), 0]
        positions = _split_with_links(prefix, link, num_stages)
    elif comm and any(map(_first, extra)):
        link = [0, *_scaled(extra, shift), 0]
        positions = _split_with_links(prefix, link, num_stages)
    else:
        link = [0] * (m + 1)
        positions = _split_plain(prefix, num_stages)
    bounds = [0, *positions, m]
    exact = [
        prefix[b] - prefix[a] + link[a] + link[b] for a, b in zip(bounds, bounds[1:])
    ]
    try:
        stage_costs = tuple(e / scale for e in exact)
    except OverflowError:
        stage_costs = (math.inf,)
    if not all(math.isfinite(c) for c in stage_costs):
        raise BalanceError(
            "a stage's cost is more than a float can hold (over 1.8e308); scale the costs down."
        )
    return ChainSplit(tuple(p - 1 for p in positions), stage_costs)


_first = itemgetter(0)
_second = itemgetter(1)


def _plain_floats(costs: Sequence[float]) -> bool:
    """Are all of `costs` floats, finite and >= 0 (checked in C)?"""
    return set(map(type, costs)) <= {float} and all(map(math.isfinite, costs)) and min(costs, default=0.0) >= 0.0


def _scaled(ratios: list[tuple[int, int]], shift: int) -> list[int]:
    """[n << (shift - log2(d)) for n, d in ratios], denominators being powers of two."""
    exponents = map(sub, repeat(shift + 1), map(int.bit_length, map(_second, ratios)))
    return list(map(lshift, map(_first, ratios), exponents))


def _ratio(value: float, what: str) -> tuple[int, int]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            if isinstance(cast(object, value), (str, bytes)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{what} is {value!r}; it must be a number.") from None
    if isinstance(value, float) and not math.isfinite(value) or value < 0:
        raise BalanceError(f"{what} is {value!r}; it must be a finite number >= 0.")
    return value.as_integer_ratio()


def check_num_stages(num_stages: int) -> None:
    if isinstance(num_stages, bool) or not isinstance(num_stages, int):
        raise TypeError(f"num_stages={num_stages!r}: it must be an integer >= 1.")
    if num_stages < 1:
        raise BalanceError(f"num_stages={num_stages!r}: it must be an integer >= 1.")


def check_comm_weight(comm_weight: float) -> None:
    if isinstance(comm_weight, bool) or not isinstance(comm_weight, (int, float)):
        raise TypeError(f"comm_weight={comm_weight!r}: it must be a finite number >= 0.")
    if not math.isfinite(comm_weight) or comm_weight < 0:
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


def _split_plain(prefix: list[int], num_stages: int, limit: int | None = None) -> list[int]:
    """Optimal boundary positions (1..m-1), lexicographically smallest among optimal ones."""
    m = len(prefix) - 1
    if num_stages == 1:
        return []
    if limit is None:  # the optimal bottleneck, unless the caller has it
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
    up: list[int] = list(map(add, prefix, link))  # cost of a..b = up[b] - down[a]
    down: list[int] = list(map(sub, prefix, link))

    def worst(positions: list[int]) -> int:
        b = [0, *positions, m]
        return max(up[j] - down[i] for i, j in zip(b, b[1:]))

    lower = _bottleneck_plain(prefix, num_stages)  # links only add cost
    upper = worst(_split_plain(prefix, num_stages, lower))  # a feasible value
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
