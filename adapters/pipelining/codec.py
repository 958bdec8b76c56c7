"""Boundary codec: the engine moves tensors only, so other values are encoded around each stage.

For every value crossing a boundary, its `WireFormat` is decided once from an example run;
the encoding and decoding are then nodes of a generated fx graph wrapped around the stage
module (no per-step lookups by name). `None` never travels: the receiver knows it statically.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.utils._pytree import TreeSpec, tree_leaves, tree_unflatten

from core import PlanError

WireKind = Literal["tensor", "scalar", "ints", "none"]


class UnsupportedBoundaryValue(PlanError):
    """A value crossing a stage boundary has no tensor encoding."""


@dataclass(frozen=True)
class WireFormat:
    kind: WireKind
    dtype: torch.dtype | None = None  # of an encoded scalar
    size: bool = False  # ints that were a torch.Size (else a tuple)

    @property
    def travels(self) -> bool:
        return self.kind != "none"


def wire_format(value: Any, name: str) -> WireFormat:
    if isinstance(value, torch.Tensor):
        return WireFormat("tensor")
    if value is None:
        return WireFormat("none")
    if isinstance(value, bool):
        return WireFormat("scalar", torch.bool)
    if isinstance(value, int):
        return WireFormat("scalar", torch.int64)
    if isinstance(value, float):
        return WireFormat("scalar", torch.float64)
    if isinstance(value, tuple) and all(type(v) is int for v in value):
        return WireFormat("ints", size=isinstance(value, torch.Size))
    raise UnsupportedBoundaryValue(
        f"value {name!r} ({type(value).__name__}) crosses a stage boundary, but the pipeline "
        "engine moves only tensors, scalars, int tuples and None; move the cut so that it "
        "does not cross, or return tensors from that module."
    )


def encode(value: Any, fmt: WireFormat, device: torch.device) -> torch.Tensor | None:
    """What the generated code sends for `value` (used to build the engine's examples)."""
    if fmt.kind == "tensor":
        return value.contiguous()  # type: ignore[no-any-return]
    if fmt.kind == "scalar":
        return torch.tensor(value, dtype=fmt.dtype, device=device)
    if fmt.kind == "ints":
        return torch.tensor(list(value), dtype=torch.int64, device=device)
    return None


def _decode_node(graph: fx.Graph, wire: fx.Node, fmt: WireFormat) -> Any:
    if fmt.kind == "scalar":
        return graph.call_method("item", (wire,))
    if fmt.kind == "ints":
        ints = graph.call_function(tuple, (graph.call_method("tolist", (wire,)),))
        return graph.call_function(torch.Size, (ints,)) if fmt.size else ints
    return wire


def _encode_node(graph: fx.Graph, value: fx.Node, fmt: WireFormat, device: torch.device) -> fx.Node:
    if fmt.kind == "tensor":
        return graph.call_method("contiguous", (value,))
    if fmt.kind == "scalar":
        return graph.call_function(torch.tensor, (value,), {"dtype": fmt.dtype, "device": device})
    listed = graph.call_function(list, (value,))
    return graph.call_function(torch.tensor, (listed,), {"dtype": torch.int64, "device": device})


@dataclass(frozen=True)
class Whole:
    """A stage-0 input handed over as it is: the engine neither splits nor inspects it."""

    value: Any


@dataclass(frozen=True)
class StageIO:
    """How one stage's inputs arrive and its outputs leave."""

    inputs: tuple[WireFormat, ...]
    outputs: tuple[WireFormat, ...]  # the last stage: of the leaves of its output tree
    output_tree: TreeSpec | None = None  # the last stage only: the structure the loss gets
    constants: tuple[Any, ...] = ()  # the last stage only: leaves that do not travel (None)
    # Stage 0 only: inputs that are not split per microbatch (non-tensors, replicated
    # tensors) arrive as keyword arguments wrapped in `Whole`.
    keyword_inputs: tuple[str, ...] = ()


def wire_module(inner: fx.GraphModule, io: StageIO, names: Sequence[str], device: torch.device) -> fx.GraphModule:
    """Wrap `inner` (a stage from `adapters.fx.stage_module`, taking `names`) with the codec of `io`."""
    graph = fx.Graph()
    wires = {
        name: graph.placeholder(f"w{i}")
        for i, (name, fmt) in enumerate(zip(names, io.inputs))
        if fmt.travels and name not in io.keyword_inputs
    }
    # Every stage takes **extra: the engine hands the step's keyword arguments to each
    # stage on the rank that holds stage 0.
    extra = graph.placeholder("**extra")
    args: list[Any] = []
    for name, fmt in zip(names, io.inputs):
        if name in io.keyword_inputs:
            whole = graph.call_function(operator.getitem, (extra, name))
            args.append(graph.call_function(getattr, (whole, "value")))
        elif fmt.travels:
            args.append(_decode_node(graph, wires[name], fmt))
        else:
            args.append(None)
    result = graph.call_module("inner", tuple(args))
    if io.output_tree is not None:  # the engine takes tensors from the last stage too
        result = graph.call_function(tree_leaves, (result,))
    sent = [
        _encode_node(graph, graph.call_function(operator.getitem, (result, i)), fmt, device)
        for i, fmt in enumerate(io.outputs)
        if fmt.travels
    ]
    graph.output(tuple(sent))
    root = nn.Module()
    root.add_module("inner", inner)
    module = fx.GraphModule(root, graph, class_name=f"Wire{type(inner).__name__}")
    if io.output_tree is not None:
        setattr(module, "output_decoder", OutputDecoder(io.outputs, io.output_tree, io.constants))
    return module


class OutputDecoder:
    """Rebuilds the model's output (for the loss) from the last stage's wire tensors."""

    def __init__(self, formats: Sequence[WireFormat], tree: TreeSpec, constants: Sequence[Any]) -> None:
        self.tree = tree
        # Per leaf: the index of its wire tensor and how to decode it, or a constant.
        self.plan: list[tuple[int, WireFormat] | tuple[None, Any]] = []
        wire = 0
        for fmt, constant in zip(formats, constants):
            if fmt.travels:
                self.plan.append((wire, fmt))
                wire += 1
            else:
                self.plan.append((None, constant))

    def __call__(self, wires: Sequence[torch.Tensor]) -> Any:
        leaves = [decode(wires[i], fmt) if i is not None else fmt for i, fmt in self.plan]
        return tree_unflatten(leaves, self.tree)


def decode(wire: torch.Tensor, fmt: WireFormat) -> Any:
    if fmt.kind == "scalar":
        return wire.item()
    if fmt.kind == "ints":
        ints = tuple(wire.tolist())
        return torch.Size(ints) if fmt.size else ints
    return wire
