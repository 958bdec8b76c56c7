"""Train a built-in example on DeepSpeed's pipeline engine, to compare with the unsplit model
trained in one process (`adapters.pipelining.check.train_reference`, the same data and
microbatch split). A `launch` worker, used by the engine tests and `stagecut train`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from adapters.deepspeed.pipeline import DeepSpeedPipeline
from adapters.pipelining.check import TrainResult, TrainSpec, batches, loss_fn, run_steps


def train_deepspeed(rank: int, world_size: int, spec: TrainSpec, report: bool = False) -> TrainResult:
    """Every rank builds the same model and plan, then trains its stage with SGD(`spec.lr`)
    for `spec.steps` batches; one stage per rank, `spec.data_parallel` replicas (each
    trains on the same batches, so the averaged gradient is the single replica's). With `report`, the last stage's rank prints
    a progress line per step."""
    example = spec.build()
    model = example.model
    plan = spec.plan(example)
    data = batches(spec, example)

    def sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=spec.lr)

    pipe = DeepSpeedPipeline(
        plan, model, loss_fn=loss_fn, optimizer=sgd, num_microbatches=spec.num_microbatches,
        example_args=data[0][0], example_kwargs=data[0][1], replicate=spec.replicate,
        activation_checkpointing=spec.checkpointing, data_parallel=spec.data_parallel,
        trusted_modules=spec.trusted_modules,
    )
    result = run_steps(spec, data, lambda args, kwargs, target: pipe.step(*args, target=target, **kwargs), pipe.is_last, report)
    params = dict(model.named_parameters(remove_duplicate=False))
    stage = pipe.engine.stage_id
    result.params = {name: params[name].detach().clone() for name in sorted(plan.stages[stage].params) if name in params}
    return result


def train_many(rank: int, world_size: int, specs: list[TrainSpec]) -> list[TrainResult]:
    """Several runs in one launch: starting ranks and importing DeepSpeed costs more than training."""
    return [train_deepspeed(rank, world_size, spec) for spec in specs]
