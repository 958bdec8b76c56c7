"""The bytes a stage sends and receives per step: hop by hop (what the engines do) and direct.

    comm = stage_comm(plan, microbatches=8)
    comm[1].recv_hops, comm[1].recv_direct       # bytes per step, forward values + gradients

Hop by hop: a value crosses every boundary between the stage that makes it and the last stage
that reads it, so a stage in between receives it only to send it on (a bypass value, such as
a skip connection: `StageComm.forwarded`); this is what `torch.distributed.pipelining` and
DeepSpeed do with stagecut's plans. Direct: the maker sends it once to each stage that reads
it. Each step carries the values forward and, for floating tensors, their gradients back, once
per microbatch. In all, direct sends never move more bytes than hops (a value read by k stages
is sent k times instead of once per boundary it crosses), but the maker sends more of them.

Wire bytes: a tensor its elements times the item size (of `dtype` for floating tensors when
given), a Python number 8 bytes (the engines send it as a 0-d int64/float64 tensor), `None`
nothing (never sent). Gradients go back for floating tensors only. `None` where a value lacks
value info.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.graph import EMPTY_KWARGS, DictOf, ListOf, Ref, SliceOf, ValueInfo, refs
from core.saved import FLOAT_DTYPES, itemsize

__all__ = ["StageComm", "stage_comm", "wire_bytes", "grad_bytes", "boundary_bytes"]


@dataclass(frozen=True, slots=True)
class StageComm:
    """Bytes per step (all microbatches, values forward plus gradients back) for one stage."""

    send_hops: int | None
    recv_hops: int | None
    send_direct: int | None
    recv_direct: int | None
    forwarded: int | None = None  # of `recv_hops`: values received only to be sent on (bypass)


def wire_bytes(info: ValueInfo | None, dtype: str | None = None) -> int | None:
    """Bytes of one value on the wire (see the module doc); None without value info."""
    if info is None:
        return None
    if info.kind == "tensor":
        if info.shape is not None and info.dtype is not None:
            size = itemsize(dtype if dtype is not None and info.dtype in FLOAT_DTYPES else info.dtype)
            if size is not None:
                return math.prod(info.shape) * size
        return info.nbytes
    if info.kind == "none":
        return 0
    if info.kind == "scalar":
        return 8
    return info.nbytes


def grad_bytes(info: ValueInfo | None, dtype: str | None = None) -> int | None:
    """Bytes of the gradient sent back for one value: floating tensors only."""
    if info is None:
        return None
    if info.kind == "tensor" and info.dtype in FLOAT_DTYPES:
        return wire_bytes(info, dtype)
    return 0


def _sum(values: Sequence[int | None]) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def _reads(stage: Any) -> set[str]:
    read: set[str] = set()
    for node in stage.graph.nodes:
        if node.op == "output":
            continue
        kwargs = node.kwargs
        if kwargs is EMPTY_KWARGS or not kwargs:
            for arg in node.args:
                if type(arg) is Ref:  # the common case, without a call
                    read.add(arg.name)
                elif isinstance(arg, (tuple, ListOf, DictOf, SliceOf)):
                    read.update(refs(arg))
        else:
            read.update(node.inputs())
    return read


def boundary_bytes(plan: Any, dtype: str | None = None) -> tuple[tuple[int | None, int | None], ...]:
    """For each boundary s (between stage s and s+1): bytes forward and gradient bytes back,
    per microbatch."""
    out = []
    for s in range(len(plan.stages) - 1):
        receiver = plan.stages[s + 1]
        infos = [receiver.graph.node(n).info for n in receiver.inputs]
        out.append((_sum([wire_bytes(i, dtype) for i in infos]), _sum([grad_bytes(i, dtype) for i in infos])))
    return tuple(out)


def stage_comm(plan: Any, microbatches: int, dtype: str | None = None) -> tuple[StageComm, ...]:
    """Per stage: bytes sent and received in one step, hop by hop and direct (module doc)."""
    stages = plan.stages
    n = len(stages)
    hops = boundary_bytes(plan, dtype)
    # Where each received value is made (the stage that first sends it) and who reads it.
    maker: dict[str, int] = {}
    info: dict[str, ValueInfo | None] = {}
    for s in range(1, n):
        for name in stages[s].inputs:
            if name not in maker:
                maker[name] = s - 1
                info[name] = stages[s].graph.node(name).info
    readers: dict[str, list[int]] = {}
    bypass: list[tuple[str, ...]] = [()]
    for s in range(1, n):
        read = _reads(stages[s])
        for name in stages[s].inputs:
            if name in read:
                readers.setdefault(name, []).append(s)
        sent = set(stages[s].outputs)  # `Stage.bypass`, from the reads at hand
        bypass.append(tuple(name for name in stages[s].inputs if name not in read and name in sent))
    send_direct: list[list[int | None]] = [[] for _ in range(n)]
    recv_direct: list[list[int | None]] = [[] for _ in range(n)]
    for name, s0 in maker.items():
        fwd, bwd = wire_bytes(info[name], dtype), grad_bytes(info[name], dtype)
        for reader in readers.get(name, ()):
            send_direct[s0].append(fwd)
            recv_direct[s0].append(bwd)  # its gradient comes back
            recv_direct[reader].append(fwd)
            send_direct[reader].append(bwd)
    out = []
    for s in range(n):
        out_f, out_b = hops[s] if s < n - 1 else (0, 0)
        in_f, in_b = hops[s - 1] if s > 0 else (0, 0)
        send = None if out_f is None or in_b is None else microbatches * (out_f + in_b)
        recv = None if in_f is None or out_b is None else microbatches * (in_f + out_b)
        sd, rd = _sum(send_direct[s]), _sum(recv_direct[s])
        # stage 0 makes the model inputs it passes on: nothing is forwarded there
        infos = [stages[s].graph.node(name).info for name in bypass[s]]
        fw = _sum([wire_bytes(i, dtype) for i in infos] + [grad_bytes(i, dtype) for i in infos])
        out.append(
            StageComm(
                send,
                recv,
                None if sd is None else microbatches * sd,
                None if rd is None else microbatches * rd,
                None if fw is None else microbatches * fw,
            )
        )
    return tuple(out)
