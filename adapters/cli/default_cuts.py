"""The cuts `stagecut plan` makes when given none: the balancer's candidates, in equal groups."""

from __future__ import annotations

from dataclasses import dataclass

from core.candidates import candidate_cuts
from core.cuts import Cut
from core.snapshot import Snapshot

DEFAULT_STAGES = 4


@dataclass(frozen=True, slots=True)
class DefaultCuts:
    cuts: tuple[Cut, ...]
    why: str


def equal_blocks(snapshot: Snapshot, stages: int = DEFAULT_STAGES) -> DefaultCuts:
    """Cut after the candidate blocks of `core.candidates.candidate_cuts` at equal spacing.

    The candidates are the calls of the numbered blocks that hold most of the model
    (`blocks.0` ... `blocks.7`; an encoder's and a decoder's together), or else every call
    of the root graph. For 8 blocks and 4 stages: after `blocks.1`, `blocks.3`, `blocks.5`.
    """
    blocks = candidate_cuts(snapshot)
    groups = min(stages, len(blocks))
    if groups < 2:
        return DefaultCuts((), "found nothing to cut between")
    cuts = tuple(blocks[round(len(blocks) * g / groups) - 1] for g in range(1, groups))
    return DefaultCuts(cuts, f"{len(blocks)} blocks ({blocks[0].path} ... {blocks[-1].path}) in {groups} equal groups")
