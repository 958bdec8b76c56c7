"""Automatic stage balancing: the cuts that make the most expensive stage as cheap as possible.

    cuts = balance(snapshot, 4, cost=costs.params)          # or costs.flops, a {path: cost} table
    plan(snapshot, cuts)

How it works, in three pure steps, each in its own file:

1. Candidates (`core.candidates.candidate_cuts`): the boundaries the balancer may choose, each
   "after module X": by default the calls of the numbered module list that holds most of the
   model, or every call down to a call depth, or an explicit list of module paths.
2. The chain (`core.chain.chain`): the candidates in execution order and the cost of the
   segments between them (plus, with ``comm_weight``, the bytes crossing each one).
3. The partition (`core.partition.partition_chain`): an exact min-max partition of the chain
   of segments into ``num_stages`` contiguous stages; among optimal partitions, the one with
   the lexicographically smallest boundary positions.

With ``max_memory``, step 3 is `core.fit`: the same minimum over the partitions whose every
stage's peak memory (as `core.figures` gives it for ``training``: schedule, microbatches,
optimizer, dtype) stays under the cap, exactly; `BalanceError` names the smallest achievable
peak when none does.

This module is the entry point (`balance`, `balance_report`) and re-exports the three steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from core.candidates import Candidates, candidate_cuts
from core.chain import Chain, chain
from core.costs import CostModel
from core.cuts import Cut
from core.errors import BalanceError
from core.fit import RangeMemory, Training, fit_partition
from core.partition import ChainSplit, check_comm_weight, check_num_stages, partition_chain
from core.plan import no_cycle_collection
from core.snapshot import Snapshot

__all__ = [
    "Balance",
    "Candidates",
    "Chain",
    "ChainSplit",
    "Training",
    "balance",
    "balance_report",
    "candidate_cuts",
    "chain",
    "partition_chain",
]


@dataclass(frozen=True, slots=True)
class Balance:
    """What `balance_report` found: the cuts, each stage's cost, and the chain it chose from."""

    cuts: tuple[Cut, ...]
    stage_costs: tuple[float, ...]
    chain: Chain
    peaks: tuple[int, ...] | None = None  # with max_memory: each stage's peak memory in bytes

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


def balance(
    snapshot: Snapshot,
    num_stages: int,
    *,
    cost: CostModel | Mapping[str, float],
    candidates: Candidates = None,
    comm_weight: float = 0.0,
    max_memory: float | None = None,
    training: Training | None = None,
) -> tuple[Cut, ...]:
    """The `num_stages - 1` cuts, among `candidates`, that minimise the most expensive stage.

    `cost` is a cost model (`core.costs.params`, `core.costs.flops`, ...) or a table from
    module path to cost. `comm_weight` adds `comm_weight * bytes` for the values crossing a
    boundary to the stages on both of its sides (needs value info). `max_memory` (bytes)
    keeps every stage's peak memory under the cap, for `training` (`core.fit.Training`:
    schedule, microbatches, optimizer, dtype; default 1F1B, 4 microbatches, Adam, the model's
    dtype; needs value info). The cuts come in execution order, ready for `core.plan`. Raises
    `BalanceError` (or a `CutError` for bad candidate paths), both `PlanError`s.
    """
    return balance_report(
        snapshot, num_stages, cost=cost, candidates=candidates, comm_weight=comm_weight,
        max_memory=max_memory, training=training,
    ).cuts


def balance_report(
    snapshot: Snapshot,
    num_stages: int,
    *,
    cost: CostModel | Mapping[str, float],
    candidates: Candidates = None,
    comm_weight: float = 0.0,
    max_memory: float | None = None,
    training: Training | None = None,
) -> Balance:
    """`balance`, with the stage costs and the candidate chain it chose from."""
    with no_cycle_collection():  # as `plan`: many long-lived objects, no cycles (core.plan)
        return _balance_report(snapshot, num_stages, cost, candidates, comm_weight, max_memory, training)


def _balance_report(
    snapshot: Snapshot,
    num_stages: int,
    cost: CostModel | Mapping[str, float],
    candidates: Candidates,
    comm_weight: float,
    max_memory: float | None,
    training: Training | None,
) -> Balance:
    check_num_stages(num_stages)
    check_comm_weight(comm_weight)
    cap = _check_max_memory(max_memory)
    if training is not None and not isinstance(training, Training):
        raise TypeError(f"training={training!r}: give a core.fit.Training (schedule, microbatches, optimizer, dtype).")
    if cap is not None:
        (training or Training()).check()
    found = chain(snapshot, cost, candidates, with_bytes=comm_weight > 0)
    available = len(found.segment_costs)
    if num_stages > available:
        raise BalanceError(
            f"cannot make {num_stages} stages from {len(found.boundaries)} candidate boundaries "
            f"(at most {available} stages); give more candidates (candidates=<call depth> or "
            "a list of module paths) or ask for fewer stages."
        )
    if cap is not None:
        assert found.flat is not None
        memory = RangeMemory(found.flat, snapshot, training or Training())
        flight = memory.in_flight(num_stages)
        fitted = fit_partition(
            found.segment_costs,
            num_stages,
            cap,
            lambda t, i, stop: memory.peaks(flight[t], i, stop),
            boundary_bytes=found.boundary_bytes,
            comm_weight=comm_weight,
            describe=lambda k: str(found.boundaries[k]) if 0 <= k < len(found.boundaries) else "the model's end",
        )
        split = fitted.split
        return Balance(tuple(found.boundaries[k] for k in split.cuts), split.stage_costs, found, fitted.peaks)
    split = partition_chain(
        found.segment_costs,
        num_stages,
        boundary_bytes=found.boundary_bytes,
        comm_weight=comm_weight,
    )
    return Balance(tuple(found.boundaries[k] for k in split.cuts), split.stage_costs, found)


def _check_max_memory(max_memory: float | None) -> int | None:
    """The cap in whole bytes (a fraction of a byte cannot be held)."""
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)):
        raise TypeError(f"max_memory={max_memory!r}: give bytes, a number > 0 (80e9 for 80 GB).")
    if not (math.isfinite(max_memory) and max_memory > 0):
        raise BalanceError(f"max_memory={max_memory!r}: give bytes, a finite number > 0 (80e9 for 80 GB).")
    return int(max_memory)
