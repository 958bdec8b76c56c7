"""The bytes a rank really sends in one step of `torch.distributed.pipelining`: what the
hop-by-hop communication figure (`core.comm.stage_comm`) predicts.

`sent_bytes(rank, world_size, spec)` is a `launch` worker: it builds the pipeline of a
`TrainSpec` as `stagecut train` does, runs one step to warm up, then counts the bytes of every
point-to-point send the engine makes in the next step (activations forward, gradients back),
by wrapping the send path: the `P2POp`s it creates with `isend`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from adapters.fx import snapshot
from adapters.pipelining.check import TrainSpec, batches, loss_fn
from adapters.pipelining.schedule import Pipeline
from core import plan as make_plan

__all__ = ["sent_bytes", "sent_bytes_many"]


def sent_bytes(rank: int, world_size: int, spec: TrainSpec) -> int:
    """Bytes this rank sends to other ranks in the second training step of `spec`."""
    example = spec.build()
    model = example.model
    snap = snapshot(model, *example.args, cuts=list(spec.cuts), **example.kwargs)
    planned = make_plan(snap, spec.cuts)
    data = batches(spec, example)
    pipe = Pipeline(
        planned, model, kind=spec.kind, loss_fn=loss_fn, num_microbatches=spec.num_microbatches,
        example_args=data[0][0], example_kwargs=data[0][1], replicate=spec.replicate,
    )
    counted = [0]
    original = dist.P2POp

    class CountingP2POp(original):  # type: ignore[misc, valid-type]
        def __init__(self, op: Any, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            super().__init__(op, tensor, *args, **kwargs)
            if op is dist.isend:
                counted[0] += tensor.numel() * tensor.element_size()

    for step, (args, kwargs, target) in enumerate(data[:2]):
        counted[0] = 0
        dist.P2POp = CountingP2POp  # type: ignore[misc]
        try:
            pipe.step(*args, target=target, **kwargs)
        finally:
            dist.P2POp = original  # type: ignore[misc]
        dist.barrier()
    return counted[0]


def sent_bytes_many(rank: int, world_size: int, specs: list[TrainSpec]) -> list[int]:
    """`sent_bytes` for several specs in one launch (spawning ranks costs more than a step)."""
    return [sent_bytes(rank, world_size, spec) for spec in specs]
