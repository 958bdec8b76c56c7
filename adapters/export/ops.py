"""The marker ops recorded in exported graphs; they are never run, only read by `regroup`.

`leaf(call, inputs)` stands for one call of an opaque module: export records one node instead
of tracing the module's code. `enter(call, inputs)` / `exit(call, outputs)` bracket the call of
a traced module, so its inputs and outputs are exact values of the flat graph. Their fake
kernels return fresh tensors with the metadata the capture stashed (or the inputs' metadata).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx.node import has_side_effect

# call id -> fake outputs of an opaque call, filled by the capture before the op is recorded
STASHED: dict[int, list[Tensor]] = {}


class MarkerRun(RuntimeError):
    """A marker op was run on real data: an exported program of `capture` is not executable."""


@torch.library.custom_op("stagecut::leaf", mutates_args=())
def leaf(call: int, inputs: list[Tensor]) -> list[Tensor]:
    raise MarkerRun("stagecut::leaf only marks a module call in a captured graph")


@torch.library.custom_op("stagecut::enter", mutates_args=())
def enter(call: int, inputs: list[Tensor]) -> list[Tensor]:
    raise MarkerRun("stagecut::enter only marks a module call in a captured graph")


@torch.library.custom_op("stagecut::exit", mutates_args=())
def exit_(call: int, outputs: list[Tensor]) -> list[Tensor]:
    raise MarkerRun("stagecut::exit only marks a module call in a captured graph")


def _fresh(tensors: list[Tensor]) -> list[Tensor]:
    # New tensors, never aliases: a custom op may not return its inputs.
    return [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device) for t in tensors]


@leaf.register_fake
def _leaf_fake(call: int, inputs: list[Tensor]) -> list[Tensor]:
    return _fresh(STASHED[call])


@enter.register_fake
def _enter_fake(call: int, inputs: list[Tensor]) -> list[Tensor]:
    return _fresh(inputs)


@exit_.register_fake
def _exit_fake(call: int, outputs: list[Tensor]) -> list[Tensor]:
    return _fresh(outputs)


LEAF = torch.ops.stagecut.leaf.default
ENTER = torch.ops.stagecut.enter.default
EXIT = torch.ops.stagecut.exit.default

# Export removes pure nodes whose results are unused; a marker must stay even then.
for _op in (LEAF, ENTER, EXIT):
    has_side_effect(_op)
