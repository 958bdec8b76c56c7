"""DeepSpeed's side of the boundary codec (`adapters.engine.codec`).

DeepSpeed's pipeline engine moves one tensor or a flat tuple of tensors between stages, and
its gradient exchange has rules of its own: every float tensor a stage sends must have a
gradient path (it calls `backward` on each), and every float tensor a stage receives must
get a gradient (it sends `.grad`, asserting it is not None). Integer tensors are skipped.

So each boundary travels as *packs* (`Packing`):

- the values that carry a gradient (float tensors with a gradient path on the sender, sent
  to a stage that sends gradients back) are flattened into one float pack per dtype;
- everything else (ids, masks and other floats without a gradient, encoded scalars and
  shapes) travels as its raw bytes in one uint8 pack, which the engine does not differentiate.

Which values carry a gradient is decided once, by the example run with autograd on
(`packings`). The receiver ties every float pack it gets into its own output (`anchor`,
a zero gradient), so a value that a stage only passes on, or that the loss ignores, still
gets the gradient the engine asserts. The encoding and decoding are nodes of a generated fx
graph around each stage module, as in the pipelining adapter.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from adapters.engine.codec import OutputDecoder, StageIO, WireFormat, decode_node, encode, encode_node
from adapters.engine.run import ExampleRun, example_run, stage_ios
from core import Plan

BYTES = torch.uint8


@dataclass(frozen=True)
class Slot:
    """Where one travelling value sits in its boundary's packs."""

    pack: int
    offset: int  # in elements of the pack (bytes for the byte pack)
    size: int
    dtype: torch.dtype  # of the encoded tensor
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Packing:
    """How the values crossing one boundary travel: float packs first (they carry gradients),
    then at most one byte pack. `slots[i]` is None for a value that does not travel (None)."""

    formats: tuple[WireFormat, ...]
    slots: tuple[Slot | None, ...]
    packs: tuple[tuple[torch.dtype, int], ...]  # (dtype, elements) per pack, padding included
    float_packs: int

    @staticmethod
    def of(encoded: Sequence[torch.Tensor | None], formats: Sequence[WireFormat], grads: Sequence[bool],
           pad: Sequence[int] = ()) -> Packing:
        """`encoded`: the example values as the codec encodes them; `grads`: which carry a
        gradient; `pad[p]`: elements added to float pack `p` (see `_pads`)."""
        slots: list[Slot | None] = [None] * len(encoded)
        packs: list[tuple[torch.dtype, int]] = []
        float_dtypes: list[torch.dtype] = []
        for t, grad in zip(encoded, grads):
            if t is not None and grad and t.dtype not in float_dtypes:
                float_dtypes.append(t.dtype)
        for p, dtype in enumerate(float_dtypes):
            offset = 0
            for i, (t, grad) in enumerate(zip(encoded, grads)):
                if t is not None and grad and t.dtype == dtype:
                    slots[i] = Slot(p, offset, t.numel(), dtype, tuple(t.shape))
                    offset += t.numel()
            packs.append((dtype, offset + (pad[p] if p < len(pad) else 0)))
        # Bytes: widest items first, so that every slot starts aligned for its dtype.
        rest = [(i, t) for i, (t, grad) in enumerate(zip(encoded, grads)) if t is not None and not grad]
        rest.sort(key=lambda item: -item[1].element_size())
        offset = 0
        for i, t in rest:
            slots[i] = Slot(len(packs), offset, t.numel() * t.element_size(), t.dtype, tuple(t.shape))
            offset += t.numel() * t.element_size()
        if rest:
            packs.append((BYTES, offset))
        return Packing(tuple(formats), tuple(slots), tuple(packs), len(float_dtypes))

    def pack(self, graph: fx.Graph, encoded: Sequence[fx.Node | None]) -> list[fx.Node]:
        """Nodes that build the packs from the encoded values (`encode_node`s)."""
        parts: list[list[fx.Node]] = [[] for _ in self.packs]
        placed = sorted((slot.pack, slot.offset, i) for i, slot in enumerate(self.slots) if slot is not None)
        for p, _, i in placed:  # in the order of the offsets
            node = encoded[i]
            assert node is not None
            flat = graph.call_method("reshape", (node, -1))
            if p >= self.float_packs:  # raw bytes, no gradient
                flat = graph.call_method("view", (graph.call_method("detach", (flat,)), BYTES))
            parts[p].append(flat)
        packs = []
        for p, ((dtype, size), items) in enumerate(zip(self.packs, parts)):
            used = sum(s.size for s in self.slots if s is not None and s.pack == p)
            if size > used:
                items.append(graph.call_function(torch.zeros, (size - used,), {"dtype": dtype, "device": _device_of(graph, items)}))
            packs.append(items[0] if len(items) == 1 else graph.call_function(torch.cat, (items,)))
        return packs

    def unpack(self, graph: fx.Graph, packs: Sequence[fx.Node]) -> list[Any]:
        """Nodes for the decoded values (None for values that do not travel)."""
        values: list[Any] = []
        for fmt, slot in zip(self.formats, self.slots):
            if slot is None:
                values.append(None)
                continue
            pack = packs[slot.pack]
            if slot.size != self.packs[slot.pack][1]:
                pack = graph.call_method("narrow", (pack, 0, slot.offset, slot.size))
            if slot.pack >= self.float_packs:
                pack = graph.call_method("view", (pack, slot.dtype))
            values.append(decode_node(graph, graph.call_method("view", (pack, slot.shape)), fmt))
        return values


def _device_of(graph: fx.Graph, items: Sequence[fx.Node]) -> Any:
    return graph.call_function(getattr, (items[0], "device")) if items else None


class _Anchor(torch.autograd.Function):
    """`carrier` unchanged; in backward, a zero gradient for each of `tied`."""

    @staticmethod
    def forward(ctx: Any, carrier: torch.Tensor, *tied: torch.Tensor) -> torch.Tensor:
        ctx.tied = [(t.shape, t.dtype, t.device) for t in tied]
        return carrier.view_as(carrier)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zeros = (torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.tied)
        return (grads[0], *zeros)


_apply_anchor: Callable[..., torch.Tensor] = _Anchor.apply


def anchor(carrier: torch.Tensor, *tied: torch.Tensor) -> torch.Tensor:
    """Tie `tied` into `carrier`'s backward: each gets a gradient (zero) whenever `carrier` does."""
    return _apply_anchor(carrier, *tied)


def as_packs(wire: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The engine hands a stage one tensor or a tuple (activation checkpointing unwraps 1-tuples)."""
    return wire if isinstance(wire, tuple) else (wire,)


@dataclass(frozen=True)
class Wiring:
    """Every boundary's packing and every stage's codec; the same on every rank."""

    packings: list[Packing]  # packings[s]: what stage s receives (0: the model's inputs)
    ios: list[StageIO]


def wiring(plan: Plan, modules: Sequence[nn.Module], inputs: Sequence[Any], device: torch.device) -> Wiring:
    """Decide how every boundary travels from one example run, with autograd on, of the stage
    chain on one microbatch of the model's `inputs` (in stage 0's order)."""
    grads: dict[int, list[bool]] = {}

    def receive(s: int, values: list[Any]) -> list[Any]:
        # A float carries a gradient if the sender's value has a gradient path; the engine
        # hands the receiver a leaf that requires grad exactly then.
        grads[s] = [s > 0 and isinstance(v, torch.Tensor) and v.is_floating_point() and v.requires_grad for v in values]
        return [v.detach().requires_grad_(g) if isinstance(v, torch.Tensor) else v for v, g in zip(values, grads[s])]

    run = example_run(modules, inputs, grad=True, receive=receive)
    ios = stage_ios(plan, run)
    # A stage that sends no gradient-carrying value cannot send gradients back: what it
    # receives travels as bytes. Decided from the last stage (which always can) backwards.
    sends_grads = True
    for s in range(len(plan.stages) - 1, 0, -1):
        if not sends_grads:
            grads[s] = [False] * len(grads[s])
        sends_grads = any(grads[s])
    packings: list[Packing] = []
    for s in range(len(plan.stages)):
        encoded = _encoded(run, s, ios[s].inputs, device)
        pads = _pads(packings[s - 1], encoded, grads[s]) if s >= 2 else ()
        packings.append(Packing.of(encoded, ios[s].inputs, grads[s], pads))
    return Wiring(packings, ios)


def _encoded(run: ExampleRun, s: int, formats: Sequence[WireFormat], device: torch.device) -> list[torch.Tensor | None]:
    return [encode(v, f, device) for v, f in zip(run.inputs[s], formats)]


def _pads(received: Packing, encoded: Sequence[torch.Tensor | None], grads: Sequence[bool]) -> list[int]:
    """Padding for the float packs that stage s-1 sends, given what it receives (`received`).

    The engine allocates a stage's gradient buffer `i` from the same pool as its receive
    buffer `i`, and reuses that buffer, keeping its dtype, when it is large enough
    (`PipelineEngine._allocate_or_extend_buffers`). Where the dtypes differ, the float pack
    is padded to one element more than the receive buffer, so the engine allocates anew.
    """
    plain = Packing.of(encoded, [WireFormat("tensor")] * len(encoded), grads)
    pads = []
    for p in range(plain.float_packs):
        dtype, size = plain.packs[p]
        pad = 0
        if p < len(received.packs):
            got_dtype, got_size = received.packs[p]
            if got_dtype != dtype and size <= got_size:
                pad = got_size + 1 - size
        pads.append(pad)
    return pads


def stage_layer(plan: Plan, wires: Wiring, s: int, inner: fx.GraphModule, device: torch.device) -> fx.GraphModule:
    """Stage `s` as one of DeepSpeed's layers: packs in, packs out (the last stage: the encoded
    leaves of the model's output, then the float packs it received, for `WireLoss`)."""
    last = s == len(plan.stages) - 1
    graph = fx.Graph()
    wire = graph.placeholder("wire")
    received = graph.call_function(as_packs, (wire,))
    inbound = wires.packings[s]
    packs_in = [graph.call_function(operator.getitem, (received, p)) for p in range(len(inbound.packs))]
    result = graph.call_module("inner", tuple(inbound.unpack(graph, packs_in)))
    float_in = packs_in[: inbound.float_packs]
    io = wires.ios[s]
    if last:
        leaves = graph.call_function(tree_leaves, (result,))
        sent = [
            encode_node(graph, graph.call_function(operator.getitem, (leaves, i)), fmt, device)
            for i, fmt in enumerate(io.outputs)
            if fmt.travels
        ]
        graph.output((*sent, *float_in))
    else:
        encoded = [
            encode_node(graph, graph.call_function(operator.getitem, (result, i)), fmt, device) if fmt.travels else None
            for i, fmt in enumerate(io.outputs)
        ]
        packs_out = wires.packings[s + 1].pack(graph, encoded)
        if float_in:  # there is a float pack out: `wiring` made sure of it
            packs_out[0] = graph.call_function(anchor, (packs_out[0], *float_in))
        graph.output(tuple(packs_out))
    root = nn.Module()
    root.add_module("inner", inner)
    return fx.GraphModule(root, graph, class_name=f"DeepSpeed{type(inner).__name__}")


def feeder(wires: Wiring, device: torch.device) -> fx.GraphModule:
    """One microbatch of the model's inputs (in stage 0's order) as the packs stage 0 takes:
    what the first stage's rank gives the engine as `batch[0]`."""
    graph = fx.Graph()
    first = wires.packings[0]
    names = [graph.placeholder(f"input{i}") for i in range(len(first.formats))]
    encoded = [encode_node(graph, n, f, device) if f.travels else None for n, f in zip(names, first.formats)]
    graph.output(tuple(first.pack(graph, encoded)))
    return fx.GraphModule(nn.Module(), graph, class_name="DeepSpeedFeeder")


class WireLoss:
    """The loss DeepSpeed calls on the last stage's outputs: rebuilds the model's output, calls
    `loss_fn(output, labels)`, ties the received float packs in (each gets a gradient) and
    keeps each microbatch's loss (full precision, detached) in `losses`."""

    def __init__(self, loss_fn: Callable[[Any, Any], torch.Tensor], io: StageIO) -> None:
        assert io.output_tree is not None
        self.loss_fn = loss_fn
        self.decoder = OutputDecoder(io.outputs, io.output_tree, io.constants)
        self.leaves = sum(1 for f in io.outputs if f.travels)
        self.losses: list[torch.Tensor] = []
        self.__name__ = getattr(loss_fn, "__name__", type(loss_fn).__name__)  # DeepSpeed prints it

    def __call__(self, outputs: Any, labels: Any) -> torch.Tensor:
        wires = as_packs(outputs)
        loss = self.loss_fn(self.decoder(wires[: self.leaves]), labels)
        if len(wires) > self.leaves:
            loss = anchor(loss, *wires[self.leaves :])
        self.losses.append(loss.detach())
        return loss
