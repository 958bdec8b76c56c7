"""Call records: what one module call received and returned, with tensors as numbered slots.

A call's arguments and result are Python trees (tuples, lists, dicts, `ModelOutput`s...). A
template keeps the tree and puts a `Slot(i)` where the i-th tensor was, so that `regroup` can
name every tensor by the graph value that carried it, and rebuild the call in core terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from core import ValueInfo


@dataclass(frozen=True, slots=True)
class Slot:
    """The i-th tensor of a template."""

    index: int


@dataclass(frozen=True, slots=True)
class Built:
    """An object rebuilt from its fields: `cls(*items)` (a namedtuple) or `cls(**fields)`
    (a `ModelOutput` or another dict type)."""

    cls: type
    items: tuple[Any, ...] = ()
    fields: tuple[tuple[str, Any], ...] = ()


Step = tuple[Literal["item"], Any]  # one projection: `value[key]`


@dataclass(slots=True)
class CallRecord:
    """One module call seen during capture."""

    id: int
    kind: Literal["leaf", "traced"]
    module: torch.nn.Module
    caller: int | None  # the id of the traced call it was made from (None: the root call)
    args: Any = None  # template of the positional arguments (a tuple)
    kwargs: Any = None  # template of the keyword arguments (a dict)
    names: tuple[str, ...] = ()  # the parameter names of the positional arguments
    result: Any = None  # template of what it returned
    result_info: ValueInfo | None = None
    slot_infos: list[ValueInfo] = field(default_factory=list)  # per result tensor
    arg_infos: dict[str, ValueInfo] = field(default_factory=dict)  # per argument name
    note: str | None = None  # how the result's shapes were found, when not on fake tensors
    mode_read: bool | None = None  # a traced call whose code read `self.training`: its value
    unpassed: dict[str, Any] = field(default_factory=dict)  # the root's simple defaults not passed


class UnsupportedValue(TypeError):
    """A call passed or returned a value that a template cannot hold."""


def template(value: Any, tensors: list[torch.Tensor]) -> Any:
    """`value` with each tensor replaced by a `Slot` (appended to `tensors`)."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return Slot(len(tensors) - 1)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
        return value
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        # A symbolic scalar handed between modules is fixed at its example value; a later
        # mismatch fails the size checks instead of computing with the wrong value.
        if isinstance(value, torch.SymInt):
            return int(value)
        return float(value) if isinstance(value, torch.SymFloat) else bool(value)
    if type(value) is tuple:
        return tuple(template(v, tensors) for v in value)
    if type(value) is list:
        return [template(v, tensors) for v in value]
    if type(value) is dict:
        return {k: template(v, tensors) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return Built(type(value), items=tuple(template(v, tensors) for v in value))
    if isinstance(value, dict):
        return Built(type(value), fields=tuple((k, template(v, tensors)) for k, v in value.items()))
    if not _holds_tensors(value):
        return value  # an opaque constant (a config, a cache object without tensors...)
    raise UnsupportedValue(f"a {type(value).__name__} holding tensors")


def fill(tpl: Any, tensors: list[torch.Tensor]) -> Any:
    """The inverse of `template`: the tree with slots replaced by `tensors`."""
    if type(tpl) is Slot:
        return tensors[tpl.index]
    if type(tpl) is tuple:
        return tuple(fill(v, tensors) for v in tpl)
    if type(tpl) is list:
        return [fill(v, tensors) for v in tpl]
    if type(tpl) is dict:
        return {k: fill(v, tensors) for k, v in tpl.items()}
    if type(tpl) is Built:
        if tpl.fields or not tpl.items:
            return tpl.cls(**{k: fill(v, tensors) for k, v in tpl.fields})
        return tpl.cls(*(fill(v, tensors) for v in tpl.items))
    return tpl


def slot_paths(tpl: Any) -> dict[int, tuple[Step, ...]]:
    """slot index -> the projections that read it out of the tree (`[0]`, `["logits"]`...)."""
    out: dict[int, tuple[Step, ...]] = {}
    stack: list[tuple[Any, tuple[Step, ...]]] = [(tpl, ())]
    while stack:
        node, path = stack.pop()
        if type(node) is Slot:
            out.setdefault(node.index, path)
        elif type(node) in (tuple, list):
            stack.extend((v, (*path, ("item", i))) for i, v in enumerate(node))
        elif type(node) is dict:
            stack.extend((v, (*path, ("item", k))) for k, v in node.items())
        elif type(node) is Built:
            if node.fields:
                stack.extend((v, (*path, ("item", k))) for k, v in node.fields)
            else:
                stack.extend((v, (*path, ("item", i))) for i, v in enumerate(node.items))
    return out


def _holds_tensors(value: Any) -> bool:
    from torch.utils._pytree import tree_leaves

    try:
        return any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(value))
    except Exception:  # an object pytree cannot open holds no tensors we could see
        return False
