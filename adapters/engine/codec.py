"""Boundary codec: pipeline engines move tensors only, so other values are encoded around each stage.

For every value crossing a boundary, its `WireFormat` is decided once from an example run
(`adapters.engine.run`); the encoding and decoding are then nodes of a generated fx graph
that each engine adapter wraps around the stage module (no per-step lookups by name).
`None` never travels: the receiver knows it statically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import fx
from torch.utils._pytree import TreeSpec, tree_unflatten

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


def decode_node(graph: fx.Graph, wire: fx.Node, fmt: WireFormat) -> Any:
    if fmt.kind == "scalar":
        return graph.call_method("item", (wire,))
    if fmt.kind == "ints":
        ints = graph.call_function(tuple, (graph.call_method("tolist", (wire,)),))
        return graph.call_function(torch.Size, (ints,)) if fmt.size else ints
    return wire


def encode_node(graph: fx.Graph, value: fx.Node, fmt: WireFormat, device: torch.device) -> fx.Node:
    if fmt.kind == "tensor":
        return graph.call_method("contiguous", (value,))
    if fmt.kind == "scalar":
        return graph.call_function(torch.tensor, (value,), {"dtype": fmt.dtype, "device": device})
    listed = graph.call_function(list, (value,))
    return graph.call_function(torch.tensor, (listed,), {"dtype": torch.int64, "device": device})


@dataclass(frozen=True)
class StageIO:
    """How one stage's inputs arrive and its outputs leave."""

    inputs: tuple[WireFormat, ...]
    outputs: tuple[WireFormat, ...]  # the last stage: of the leaves of its output tree
    output_tree: TreeSpec | None = None  # the last stage only: the structure the loss gets
    constants: tuple[Any, ...] = ()  # the last stage only: leaves that do not travel (None)
    # Stage 0 only: inputs that are not split per microbatch (non-tensors, replicated
    # tensors); the pipelining adapter hands them over as keyword arguments.
    keyword_inputs: tuple[str, ...] = ()


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
