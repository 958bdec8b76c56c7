"""`pipeline_stage`: one plan stage as a `torch.distributed.pipelining.PipelineStage`.

The engine needs static metadata (example tensors of one microbatch for every stage's
inputs and outputs); it is taken from one run of the stage chain on the first example
microbatch, in this process, without gradients, leaving buffers and RNG as they were.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.distributed.pipelining import PipelineStage
from torch.utils._pytree import tree_leaves

from adapters.engine.codec import StageIO, WireFormat, encode
from adapters.engine.trees import engine_stages
from adapters.engine.inputs import FirstInputs, bind_inputs
from adapters.engine.run import example_run, stage_ios
from adapters.pipelining.codec import Whole, wire_module
from core import Plan


@dataclass(frozen=True)
class StageExample:
    """One stage's codec and the engine's example tensors for it."""

    io: StageIO
    input_args: tuple[torch.Tensor, ...]
    output_args: tuple[torch.Tensor, ...]


def split_inputs(inputs: FirstInputs, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Whole]]:
    """A step's model inputs as the engine's positional args (split into microbatches by the
    engine) and keyword args (`Whole`, given as they are to every microbatch)."""
    positional: list[Any] = []
    keywords: dict[str, Whole] = {}
    for name, value in zip(inputs.first.inputs, bind_inputs(inputs.first, args, kwargs)):
        if name in inputs.keywords:
            keywords[name] = Whole(value)
        else:
            positional.append(value)
    return positional, keywords


def stage_examples(
    plan: Plan, modules: Sequence[fx.GraphModule], inputs: list[Any], keywords: frozenset[str], device: torch.device
) -> list[StageExample]:
    """Run the chain once on one microbatch of the model `inputs` (in stage 0's order) and
    derive each stage's codec and the engine's examples."""
    run = example_run(modules, inputs)
    examples = []
    for s, (stage, io) in enumerate(zip(plan.stages, stage_ios(plan, run, keywords))):
        if s == 0:
            ins = tuple(_mark(v.to(device)) for v, n in zip(run.inputs[0], stage.inputs) if n not in keywords)
        else:
            ins = _wire(run.inputs[s], io.inputs, device)
        sent = tree_leaves(run.output) if s == len(plan.stages) - 1 else run.inputs[s + 1]
        examples.append(StageExample(io, ins, _wire(sent, io.outputs, device)))
    return examples


def _wire(values: Sequence[Any], formats: Sequence[WireFormat], device: torch.device) -> tuple[torch.Tensor, ...]:
    encoded = (encode(v, f, device) for v, f in zip(values, formats))
    return tuple(_mark(t.to(device)) for t in encoded if t is not None)


def _mark(t: torch.Tensor) -> torch.Tensor:
    # Both sides of a boundary must agree on which values carry gradients: floats do.
    return t.detach().clone().contiguous().requires_grad_(t.is_floating_point())


def pipeline_stage(
    plan: Plan,
    model: nn.Module,
    stage_index: int,
    *,
    device: torch.device | str,
    num_microbatches: int,
    example_args: Sequence[Any],
    example_kwargs: Mapping[str, Any] | None = None,
    replicate: Collection[str] = (),
    group: Any = None,
) -> PipelineStage:
    """This rank's stage `stage_index` for the engine, with tensor-only inputs and outputs.

    `example_args`/`example_kwargs` are one full batch, split like the engine splits it;
    model inputs named in `replicate` are given whole to every microbatch.
    """
    return build_stages(plan, model, [stage_index], device=device, num_microbatches=num_microbatches,
                        example_args=example_args, example_kwargs=example_kwargs, replicate=replicate,
                        group=group)[0]


def build_stages(
    plan: Plan,
    model: nn.Module,
    indices: Sequence[int],
    *,
    device: torch.device | str,
    num_microbatches: int,
    example_args: Sequence[Any],
    example_kwargs: Mapping[str, Any] | None = None,
    replicate: Collection[str] = (),
    group: Any = None,
    trusted_modules: Collection[str] = (),
) -> list[PipelineStage]:
    """Several stages of one rank (interleaved schedules), sharing one example run."""
    device = torch.device(device)
    plan, modules, one, keywords = engine_stages(
        plan, model, example_args, example_kwargs, replicate, num_microbatches, trusted_modules
    )
    examples = stage_examples(plan, modules, one, keywords, device)
    built = []
    for s in indices:
        example = examples[s]
        wired = wire_module(modules[s], example.io, plan.stages[s].inputs, device).to(device)
        built.append(
            PipelineStage(
                wired,
                s,
                len(plan.stages),
                device,
                input_args=example.input_args,
                output_args=example.output_args,
                group=group,
            )
        )
    return built
