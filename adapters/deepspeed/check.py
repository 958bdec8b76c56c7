"""Train a built-in example on DeepSpeed's pipeline engine, to compare with the unsplit model
trained in one process (`adapters.pipelining.check.train_reference`, the same data and
microbatch split). A `launch` worker, used by the engine tests and `stagecut train`."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from adapters.deepspeed.pipeline import DeepSpeedPipeline
from adapters.fx import snapshot
from adapters.pipelining.check import TrainResult, TrainSpec, _report, batches, loss_fn, tokens_per_step, tokens_per_step
from core import plan as make_plan


def train_deepspeed(rank: int, world_size: int, spec: TrainSpec, report: bool = False) -> TrainResult:
    """Every rank builds the same model and plan, then trains its stage with SGD(`spec.lr`)
    for `spec.steps` batches; one stage per rank, `spec.data_parallel` replicas (each
    trains on the same batches, so the averaged gradient is the single replica's). With `report`, the last stage's rank prints
    a progress line per step."""
    example = spec.build()
    model = example.model
    snap = snapshot(model, *example.args, cuts=list(spec.cuts), tracer=spec.tracer, **example.kwargs)  # type: ignore[arg-type]
    plan = make_plan(snap, spec.cuts)
    data = batches(spec, example)

    def sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=spec.lr)

    pipe = DeepSpeedPipeline(
        plan, model, loss_fn=loss_fn, optimizer=sgd, num_microbatches=spec.num_microbatches,
        example_args=data[0][0], example_kwargs=data[0][1], replicate=spec.replicate,
        activation_checkpointing=spec.checkpointing, data_parallel=spec.data_parallel,
    )
    result = TrainResult(tokens=tokens_per_step(data[0][0], data[0][1]))
    for step, (args, kwargs, target) in enumerate(data):
        start = time.perf_counter()
        losses = pipe.step(*args, target=target, **kwargs)
        dist.barrier()
        result.seconds.append(time.perf_counter() - start)
        if pipe.is_last:
            result.losses.append(float(torch.stack(losses).mean()))
            if report:
                _report(step, spec.steps, result.losses[-1], result.tokens / result.seconds[-1])
    params = dict(model.named_parameters(remove_duplicate=False))
    stage = pipe.engine.stage_id
    result.params = {name: params[name].detach().clone() for name in sorted(plan.stages[stage].params) if name in params}
    return result


def train_many(rank: int, world_size: int, specs: list[TrainSpec]) -> list[TrainResult]:
    """Several runs in one launch: starting ranks and importing DeepSpeed costs more than training."""
    return [train_deepspeed(rank, world_size, spec) for spec in specs]
