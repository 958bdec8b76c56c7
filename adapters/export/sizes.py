"""Sizes that export fixed: checked when a stage runs, so another size fails clearly.

The batch dimension is exported as dynamic where the model allows it; every other size of an
input (and the batch where the model's code fixed it) is baked into the exported ops. Stage 0
checks its inputs against those sizes before computing anything.
"""

from __future__ import annotations

from typing import Any

import torch

from core import PlanError


class SpecializedSize(PlanError):
    """A stage was run on an input size (or non-tensor input value) other than the one export fixed."""


def check_sizes(value: Any, sizes: tuple[int | None, ...], name: str) -> None:
    """Raise `SpecializedSize` unless `value` has `sizes` (None: any size)."""
    if not isinstance(value, torch.Tensor):
        return
    actual = tuple(value.shape)
    if len(actual) != len(sizes) or any(want is not None and want != got for want, got in zip(sizes, actual)):
        shown = tuple("*" if s is None else s for s in sizes)
        raise SpecializedSize(
            f"input {name!r} has shape {actual}, but the model was exported for shape {shown} "
            "(* = any size); export fixed the other sizes. Snapshot again with an example of "
            "this shape, or a batch of at least 2 so that the batch size stays free."
        )


def check_value(value: Any, expected: Any, name: str) -> None:
    """Raise `SpecializedSize` unless a non-tensor input has the value export fixed."""
    if type(value) is not type(expected) or value != expected:
        raise SpecializedSize(
            f"input {name!r} is {value!r}, but the model was exported with {name}={expected!r}, "
            "which chose its code path; snapshot again with this value."
        )
