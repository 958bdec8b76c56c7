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
from torch.utils._pytree import tree_flatten

from adapters.fx import stage_modules
from adapters.graph.convert import arg_to_fx
from adapters.pipelining.codec import StageIO, Whole, WireFormat, encode, wire_format, wire_module
from core import Plan, PlanError, Stage


@dataclass(frozen=True)
class StageExample:
    """One stage's codec and the engine's example tensors for it."""

    io: StageIO
    input_args: tuple[torch.Tensor, ...]
    output_args: tuple[torch.Tensor, ...]


def microbatch(values: Sequence[Any], names: Sequence[str], keywords: Collection[str], num_microbatches: int, index: int = 0) -> list[Any]:
    """Microbatch `index` as the engine cuts it: positional tensors split on dim 0; keyword
    inputs (non-tensors, replicated tensors) whole."""

    def part(value: Any, name: str) -> Any:
        if name in keywords:
            return value
        if value.dim() == 0 or value.shape[0] % num_microbatches:
            raise PlanError(
                f"model input {name!r} of shape {tuple(value.shape)} does not split into "
                f"{num_microbatches} equal microbatches on dim 0; use a batch size divisible by the "
                "microbatch count, or pass replicate=[...] for inputs that are not batched."
            )
        return value.tensor_split(num_microbatches)[index]

    return [part(v, n) for v, n in zip(values, names)]


def bind_inputs(first: Stage, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """The model's call arguments in stage 0's input order (positional, by name, default)."""
    bound: list[Any] = []
    for i, node in enumerate(first.graph.placeholders):
        if i < len(args):
            bound.append(args[i])
        elif node.target in kwargs:
            bound.append(kwargs[node.target])
        elif node.args:
            bound.append(arg_to_fx(node.args[0], {}))
        else:
            raise PlanError(f"the model input {node.target!r} is missing from the example inputs.")
    return bound


@dataclass(frozen=True)
class FirstInputs:
    """How the model's inputs reach stage 0: tensors positionally (the engine splits them into
    microbatches), the rest as `Whole` keywords: non-tensors, and tensors named in `replicate`.
    Decided once from the example inputs, so the codec and every step agree."""

    first: Stage
    keywords: frozenset[str]

    @staticmethod
    def of(first: Stage, example: Sequence[Any], replicate: Collection[str]) -> FirstInputs:
        """`example`: the model's inputs bound in stage 0's order (`bind_inputs`)."""
        replicated = {n.name for n in first.graph.placeholders if n.target in replicate}
        keywords = {n for v, n in zip(example, first.inputs) if not isinstance(v, torch.Tensor) or n in replicated}
        return FirstInputs(first, frozenset(keywords))

    def split(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Whole]]:
        """A step's model inputs as the engine's positional args and keyword args."""
        positional: list[Any] = []
        keywords: dict[str, Whole] = {}
        for name, value in zip(self.first.inputs, bind_inputs(self.first, args, kwargs)):
            if name in self.keywords:
                keywords[name] = Whole(value)
            else:
                positional.append(value)
        return positional, keywords


def stage_examples(
    plan: Plan, modules: Sequence[fx.GraphModule], inputs: list[Any], keywords: frozenset[str], device: torch.device
) -> list[StageExample]:
    """Run the chain once on one microbatch of the model `inputs` (in stage 0's order) and
    derive each stage's codec and the engine's examples."""
    values: list[list[Any]] = []
    current: Any = inputs
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for module in modules:
                values.append(list(current))
                current = module(*current)
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    last_output = current
    examples = []
    for s, stage in enumerate(plan.stages):
        formats = tuple(wire_format(v, n) for v, n in zip(values[s], stage.inputs))
        keyword = tuple(n for n in stage.inputs if n in keywords) if s == 0 else ()
        is_last = s == len(plan.stages) - 1
        if is_last:
            sent, tree = tree_flatten(last_output)
            names = [f"output leaf {i}" for i in range(len(sent))]
        else:
            sent, tree, names = values[s + 1], None, list(plan.stages[s + 1].inputs)
        out_formats = tuple(wire_format(v, n) for v, n in zip(sent, names))
        constants = tuple(None if f.travels else v for v, f in zip(sent, out_formats)) if is_last else ()
        io = StageIO(formats, out_formats, tree, constants, keyword)
        if s == 0:
            ins = tuple(_mark(v.to(device)) for v, n in zip(values[0], stage.inputs) if n not in keywords)
        else:
            ins = _wire(values[s], formats, device)
        outs = _wire(sent, out_formats, device)
        examples.append(StageExample(io, ins, outs))
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
) -> list[PipelineStage]:
    """Several stages of one rank (interleaved schedules), sharing one example run."""
    device = torch.device(device)
    modules = stage_modules(plan, model)
    first = plan.stages[0]
    inputs = bind_inputs(first, example_args, example_kwargs or {})
    keywords = FirstInputs.of(first, inputs, replicate).keywords
    examples = stage_examples(plan, modules, microbatch(inputs, first.inputs, keywords, num_microbatches), keywords, device)
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
