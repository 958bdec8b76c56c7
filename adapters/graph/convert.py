"""fx values <-> core argument trees and value info."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx

from adapters.graph.handles import function_name, opaque, resolve_function, resolve_opaque
from core import Arg, DictOf, ListOf, Node, Opaque, Ref, SliceOf, ValueInfo
from core.graph import Op

_JSON_SCALARS = (bool, int, float, str)


def arg_to_core(value: Any) -> Arg:
    """An fx argument (nodes, containers, constants) as a core argument tree."""
    if isinstance(value, fx.Node):
        return Ref(value.name)
    if value is None or type(value) in _JSON_SCALARS:
        return value  # type: ignore[no-any-return]
    if type(value) is tuple:
        return tuple(arg_to_core(v) for v in value)
    # fx stores lists and dicts as its immutable_list / immutable_dict subclasses.
    if isinstance(value, list):
        return ListOf(tuple(arg_to_core(v) for v in value))
    if isinstance(value, dict):
        return DictOf(tuple((arg_to_core(k), arg_to_core(v)) for k, v in value.items()))
    if type(value) is slice:
        return SliceOf(arg_to_core(value.start), arg_to_core(value.stop), arg_to_core(value.step))
    return opaque(value)


def arg_to_fx(arg: Arg, env: Mapping[str, Any]) -> Any:
    """A core argument tree back as fx arguments, with `Ref`s looked up in `env`."""
    if type(arg) is Ref:
        return env[arg.name]
    if type(arg) is tuple:
        return tuple(arg_to_fx(a, env) for a in arg)
    if type(arg) is ListOf:
        return [arg_to_fx(a, env) for a in arg.items]
    if type(arg) is DictOf:
        return {arg_to_fx(k, env): arg_to_fx(v, env) for k, v in arg.items}
    if type(arg) is SliceOf:
        return slice(arg_to_fx(arg.start, env), arg_to_fx(arg.stop, env), arg_to_fx(arg.step, env))
    if type(arg) is Opaque:
        return resolve_opaque(arg)
    return arg


def node_to_core(node: fx.Node, info: ValueInfo | None) -> Node:
    target = node.target
    name = function_name(target) if callable(target) else str(target)
    return Node(
        name=node.name,
        op=_op(node.op),
        target=name,
        args=tuple(arg_to_core(a) for a in node.args),
        kwargs=_kwargs(node.kwargs),
        info=info,
    )


def _op(op: str) -> Op:
    if op in ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output"):
        return op  # type: ignore[return-value]
    raise ValueError(f"unknown fx op {op!r}")  # pragma: no cover - fx has exactly six


def _kwargs(kwargs: Mapping[str, Any]) -> Any:
    from pyrsistent import pmap

    return pmap({k: arg_to_core(v) for k, v in kwargs.items()})


def call_target(node: Node) -> Callable[..., Any] | str:
    """The fx target of a core node: a callable for call_function, else the string."""
    return resolve_function(node.target) if node.op == "call_function" else node.target


def value_info(value: Any) -> ValueInfo:
    """What a value is, from a real or fake result."""
    if isinstance(value, torch.Tensor):
        shape = tuple(_hint(d) for d in value.shape)
        return ValueInfo("tensor", shape, str(value.dtype).removeprefix("torch."), math.prod(shape) * value.element_size())
    if value is None:
        return ValueInfo("none", nbytes=0)
    if isinstance(value, (bool, int, float, torch.SymInt)):
        return ValueInfo("scalar", nbytes=8)
    if isinstance(value, (tuple, list)):
        return ValueInfo("tuple" if isinstance(value, tuple) else "list", (len(value),), nbytes=_sum_bytes(value_info(v) for v in value))
    if isinstance(value, dict):
        return ValueInfo("dict", (len(value),), nbytes=_sum_bytes(value_info(v) for v in value.values()))
    return ValueInfo("other")


def _hint(size: int | torch.SymInt) -> int:
    """A size as a number: a symbolic size (export's dynamic batch) by its example value."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else 0
    return int(size)


def _sum_bytes(infos: Any) -> int | None:
    total = 0
    for info in infos:
        if info.nbytes is None:
            return None
        total += info.nbytes
    return total
