"""Tied weights across ranks: equal at start, gradients summed after every backward.

Each rank holds its own copy of a tied weight (the embedding on the first stage's rank, the
head on the last one's). A process group of exactly the ranks holding a tie group broadcasts
the owner's value once and all-reduces the gradients after each step, as DeepSpeed's tied
modules do, so an optimizer step keeps the copies equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core import Plan


@dataclass(frozen=True)
class TiedCopy:
    """This rank's copy of one tie group and the group of ranks that hold copies."""

    param: nn.Parameter
    ranks: tuple[int, ...]
    group: Any  # a torch ProcessGroup


class TieSync:
    def __init__(self, plan: Plan, model: nn.Module, stage_ranks: Sequence[int], rank: int) -> None:
        self.copies: list[TiedCopy] = []
        for tie in plan.ties:
            ranks = tuple(sorted({stage_ranks[stage] for _, stage in tie}))
            if len(ranks) < 2:
                continue  # all copies on one rank are one Parameter already
            # new_group is collective over the world: every rank makes every group, in order.
            group = dist.new_group(ranks=list(ranks))
            local = [name for name, stage in tie if stage_ranks[stage] == rank]
            if local:
                self.copies.append(TiedCopy(model.get_parameter(local[0]), ranks, group))

    def broadcast_weights(self) -> None:
        """Make every copy equal to the one on the lowest rank."""
        with torch.no_grad():
            for copy in self.copies:
                dist.broadcast(copy.param.data, src=copy.ranks[0], group=copy.group)

    def all_reduce_grads(self) -> None:
        """Sum each tied weight's gradient over the ranks that hold it."""
        for copy in self.copies:
            if copy.param.grad is None:
                copy.param.grad = torch.zeros_like(copy.param)
            dist.all_reduce(copy.param.grad, op=dist.ReduceOp.SUM, group=copy.group)
