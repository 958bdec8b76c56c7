"""The pipelining engine's side of the boundary codec (`adapters.engine.codec`): each stage
module is wrapped in a generated fx graph that decodes the tensors it receives and encodes
what it sends, as `torch.distributed.pipelining` moves tensors only."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from adapters.engine.codec import OutputDecoder, StageIO, decode_node, encode_node


@dataclass(frozen=True)
class Whole:
    """A stage-0 input handed over as it is: the engine neither splits nor inspects it."""

    value: Any


def wire_module(inner: fx.GraphModule, io: StageIO, names: Sequence[str], device: torch.device) -> fx.GraphModule:
    """Wrap `inner` (a stage from `adapters.fx.stage_module`, taking `names`) with the codec of `io`.
    Stage 0's `io.keyword_inputs` arrive as keyword arguments wrapped in `Whole`."""
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
            args.append(decode_node(graph, wires[name], fmt))
        else:
            args.append(None)
    result = graph.call_module("inner", tuple(args))
    if io.output_tree is not None:  # the engine takes tensors from the last stage too
        result = graph.call_function(tree_leaves, (result,))
    sent = [
        encode_node(graph, graph.call_function(operator.getitem, (result, i)), fmt, device)
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
