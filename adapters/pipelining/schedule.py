"""Schedules over generated stages, with grad scaling done once and tied weights synced.

`Pipeline` is the whole job for one rank: place the stages, build them, make the schedule,
and `step()` = engine step + gradient scaling + tie sync. `schedule()` is the lower-level
piece for callers that build their own `PipelineStage`s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS,
)
from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping
from torch.distributed.pipelining.schedules import PipelineScheduleMulti, PipelineScheduleSingle

from adapters.engine.inputs import FirstInputs, bind_inputs
from adapters.engine.ties import TieSync
from adapters.pipelining.stage import build_stages, split_inputs
from core import Plan, PlanError

ScheduleKind = Literal["gpipe", "1f1b", "interleaved", "looped_bfs", "zero_bubble"]
SINGLE: dict[str, type[PipelineScheduleSingle]] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
MULTI: dict[str, type[PipelineScheduleMulti]] = {
    "interleaved": ScheduleInterleaved1F1B,
    "looped_bfs": ScheduleLoopedBFS,
    "zero_bubble": ScheduleInterleavedZeroBubble,
}
LossFn = Callable[..., torch.Tensor]


def stage_ranks(num_stages: int, world_size: int) -> list[int]:
    """Stage s runs on rank s % world_size (the schedules' "loop" placement)."""
    mapping = generate_stage_to_rank_mapping(world_size, num_stages, style="loop")
    return [mapping[s] for s in range(num_stages)]


def schedule(stages: Sequence[PipelineStage], kind: ScheduleKind, *, loss_fn: LossFn, num_microbatches: int) -> Any:
    """The engine's schedule for this rank's stages. Gradients are left unscaled (sums over
    microbatches): `Pipeline.step` divides once, which stays right when a rank holds two
    stages that share a parameter (the engine would divide that parameter twice)."""
    decoders = [getattr(stage.submod, "output_decoder", None) for stage in stages]
    decoder = next((d for d in decoders if d is not None), None)
    if decoder is not None:  # this rank holds the last stage: give the loss the model's output
        user_loss = loss_fn

        def loss_fn(wires: Any, target: Any) -> torch.Tensor:
            return user_loss(decoder(wires if isinstance(wires, tuple) else (wires,)), target)

    if kind in SINGLE:
        if len(stages) != 1:
            raise PlanError(f"schedule {kind!r} runs one stage per rank; this rank has {len(stages)}. Use 'interleaved'.")
        return SINGLE[kind](stages[0], num_microbatches, loss_fn=loss_fn, scale_grads=False)
    if kind in MULTI:
        return MULTI[kind](list(stages), num_microbatches, loss_fn=loss_fn, scale_grads=False)
    raise PlanError(f"unknown schedule {kind!r}; choose one of {', '.join([*SINGLE, *MULTI])}.")


class Pipeline:
    """One rank's part of a pipelined model: call `step()` on every rank, same number of times."""

    def __init__(
        self,
        plan: Plan,
        model: nn.Module,
        *,
        kind: ScheduleKind,
        loss_fn: LossFn,
        num_microbatches: int,
        example_args: Sequence[Any],
        example_kwargs: Mapping[str, Any] | None = None,
        replicate: Collection[str] = (),
        device: torch.device | str = "cpu",
        trusted_modules: Collection[str] = (),
    ) -> None:
        self.rank = dist.get_rank()
        world = dist.get_world_size()
        self.plan = plan
        self.num_microbatches = num_microbatches
        if len(plan.stages) % world:
            raise PlanError(
                f"{len(plan.stages)} stages do not spread evenly over {world} ranks; "
                "cut into a multiple of the world size."
            )
        self.placement = stage_ranks(len(plan.stages), world)
        self.local = [s for s, r in enumerate(self.placement) if r == self.rank]
        self.stages = build_stages(
            plan, model, self.local, device=device, num_microbatches=num_microbatches,
            example_args=example_args, example_kwargs=example_kwargs, replicate=replicate,
            trusted_modules=trusted_modules,
        )
        first = plan.stages[0]
        self.inputs = FirstInputs.of(first, bind_inputs(first, example_args, example_kwargs or {}), replicate)
        self.schedule = schedule(self.stages, kind, loss_fn=loss_fn, num_microbatches=num_microbatches)
        self.ties = TieSync(plan, model, self.placement, self.rank)
        self.ties.broadcast_weights()
        unique: dict[int, nn.Parameter] = {}
        for stage in self.stages:
            for p in stage.submod.parameters():
                unique.setdefault(id(p), p)
        self.parameters = list(unique.values())

    @property
    def is_first(self) -> bool:
        return 0 in self.local

    @property
    def is_last(self) -> bool:
        return len(self.plan.stages) - 1 in self.local

    def step(self, *args: Any, target: Any = None, **kwargs: Any) -> list[torch.Tensor]:
        """One training step's forward and backward; returns per-microbatch losses on the
        rank holding the last stage (else []). Zero the gradients before, step the optimizer
        over `self.parameters` after."""
        losses: list[torch.Tensor] = []
        wire_args, extra = split_inputs(self.inputs, args, kwargs) if self.is_first else ([], {})
        self.schedule.step(
            *wire_args, target=target if self.is_last else None,
            losses=losses if self.is_last else None, return_outputs=False, **extra,
        )
        with torch.no_grad():
            for p in self.parameters:
                if p.grad is not None:
                    p.grad.div_(self.num_microbatches)
        self.ties.all_reduce_grads()
        return [loss.detach() for loss in losses]
