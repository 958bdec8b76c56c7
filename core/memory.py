"""Weights, gradients and optimizer state per stage, for an optimizer and a training dtype.

    weights = stage_weights(plan, snapshot, optimizer="adam", dtype="bfloat16")
    weights[0].total                       # bytes that do not depend on the microbatches

Per parameter element (one count per storage: a tied weight held by two stages counts in both,
as each rank holds its own copy), with `p` the item size of the training dtype (the snapshot's
own when `dtype` is None; a 16-bit one means mixed precision either way):

| optimizer | dtype 32/64-bit | 16-bit (mixed precision: float32 master weights and state) |
|---|---|---|
| `sgd` | weights p + grads p | weights 2 + grads 2 + master 4 |
| `momentum` (SGD with momentum) | + state p | + master 4 + state 4 |
| `adam`, `adamw` | + 2 states of p | + master 4 + 2 states of 4 (16 bytes in all) |

Buffers (running statistics, rotary tables) count once, in their own dtype, with no gradient or
state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import PlanError
from core.saved import itemsize
from core.snapshot import Param, Snapshot

__all__ = ["DTYPES", "OPTIMIZERS", "FiguresError", "StageWeights", "check_dtype", "check_optimizer", "param_bytes", "stage_weights"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


class FiguresError(PlanError):
    """The figures cannot be computed with these settings (an unknown optimizer, dtype, ...)."""


def check_optimizer(optimizer: str) -> None:
    if optimizer not in _STATES:
        raise FiguresError(f"optimizer={optimizer!r}: choose one of {', '.join(OPTIMIZERS)}.")


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise FiguresError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)} (or None: the model's own).")


@dataclass(frozen=True, slots=True)
class StageWeights:
    """Bytes one stage holds whatever the microbatches: parameters (in the training dtype),
    buffers, gradients, and optimizer state with any float32 master copy."""

    params: int  # parameter elements
    weights: int
    buffers: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.buffers + self.grads + self.optimizer


def stage_weights(plan: Any, snapshot: Snapshot, *, optimizer: str = "adam", dtype: str | None = None) -> tuple[StageWeights, ...]:
    """One `StageWeights` per stage of `plan` (see the module doc for the bytes per element)."""
    check_optimizer(optimizer)
    check_dtype(dtype)
    out = []
    for stage in plan.stages:
        seen: set[str] = set()
        numel = weights = buffers = grads = state = 0
        for name in stage.params:
            param = snapshot.param(name)
            if param is None or param.key in seen:
                continue
            seen.add(param.key)
            w, b, g, o = param_bytes(param, optimizer, dtype)
            numel += 0 if param.buffer else param.numel
            weights += w
            buffers += b
            grads += g
            state += o
        out.append(StageWeights(numel, weights, buffers, grads, state))
    return tuple(out)


def param_bytes(param: Param, optimizer: str, dtype: str | None) -> tuple[int, int, int, int]:
    """(weights, buffers, grads, optimizer state) bytes of one parameter storage (module doc)."""
    if param.buffer:
        return 0, param.nbytes, 0, 0
    own = param.nbytes // param.numel if param.numel else 0
    size = (itemsize(dtype) or own) if dtype is not None else own
    weights = param.nbytes if dtype is None else param.numel * size
    states = _STATES[optimizer]
    if size == 2:  # 16-bit training: float32 master weights and state
        state = param.numel * 4 * (1 + states)
    else:
        state = param.numel * size * states
    return weights, 0, weights, state
