"""The model's inputs as stage 0 takes them: bound in its order, split into microbatches."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.graph.convert import arg_to_fx
from core import PlanError, Stage


def microbatch(values: Sequence[Any], names: Sequence[str], keywords: Collection[str], num_microbatches: int, index: int = 0) -> list[Any]:
    """Microbatch `index` as the engines cut it: tensors split on dim 0; `keywords` inputs
    (non-tensors, replicated tensors) whole."""

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
    """How the model's inputs reach stage 0: tensors split into microbatches, the rest whole:
    non-tensors, and tensors named in `replicate` (`keywords`, as the pipelining engine takes
    them as keyword arguments). Decided once from the example inputs, so the codec and every
    step agree."""

    first: Stage
    keywords: frozenset[str]

    @staticmethod
    def of(first: Stage, example: Sequence[Any], replicate: Collection[str]) -> FirstInputs:
        """`example`: the model's inputs bound in stage 0's order (`bind_inputs`)."""
        replicated = {n.name for n in first.graph.placeholders if n.target in replicate}
        keywords = {n for v, n in zip(example, first.inputs) if not isinstance(v, torch.Tensor) or n in replicated}
        return FirstInputs(first, frozenset(keywords))

    def microbatches(self, args: Sequence[Any], kwargs: Mapping[str, Any], num_microbatches: int) -> list[list[Any]]:
        """A step's model inputs as `num_microbatches` lists in stage 0's input order."""
        bound = bind_inputs(self.first, args, kwargs)
        return [microbatch(bound, self.first.inputs, self.keywords, num_microbatches, i) for i in range(num_microbatches)]
