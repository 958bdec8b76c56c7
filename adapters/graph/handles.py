"""The handle table: what the core sees as strings, resolved back to torch objects.

Call targets are named `f"{fn.__module__}.{fn.__qualname__}"` (the core's rules table relies on
`"_operator.getitem"`). Constants that are not JSON values become `Opaque` tokens: dtypes,
devices, layouts and memory formats get self-describing tokens that any process can resolve;
anything else is kept in this process's table under `handle:<n>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from core import Opaque, PlanError


class UnresolvedHandle(PlanError):
    """A plan names a function or constant this process cannot find."""


_OBJECTS: dict[str, object] = {}  # token -> object, for constants without a portable name
_TOKENS: dict[int, str] = {}  # id(object) -> token (objects stay alive in _OBJECTS)
_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def function_name(fn: Callable[..., Any]) -> str:
    """A portable name for a call_function target, remembered for `resolve_function`."""
    name = _operator_name(fn)
    if name is None:
        module = getattr(fn, "__module__", None) or "builtins"
        name = f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"
    known = _FUNCTIONS.setdefault(name, fn)
    if known is not fn:  # two callables with one name (e.g. closures): keep them apart
        name = f"{name}#{id(fn)}"
        _FUNCTIONS[name] = fn
    return name


def _operator_name(fn: object) -> str | None:
    """`torch.ops.<namespace>.<op>.<overload>` for the ATen-level targets of exported graphs."""
    if isinstance(fn, torch._ops.OpOverload):
        return f"torch.ops.{fn.namespace}.{fn._opname}.{fn._overloadname}"
    if isinstance(fn, torch._ops.HigherOrderOperator):
        return f"torch.ops.higher_order.{fn._name}"
    return None


def resolve_function(name: str) -> Callable[..., Any]:
    fn = _FUNCTIONS.get(name)
    if fn is None:
        fn = _import(name)
        _FUNCTIONS[name] = fn
    return fn


def _import(name: str) -> Callable[..., Any]:
    if name.startswith("torch.ops."):
        obj: Any = torch.ops
        try:
            for attr in name.split(".")[2:]:
                obj = getattr(obj, attr)
        except (AttributeError, RuntimeError):
            pass
        else:
            return obj  # type: ignore[no-any-return]
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if callable(obj):
            return obj  # type: ignore[no-any-return]
    raise UnresolvedHandle(
        f"function {name!r} cannot be found in this process; plan in the process that traced the "
        "model, or make the function importable under that name."
    )


def opaque(value: object) -> Opaque:
    """The token of a non-JSON constant."""
    if isinstance(value, torch.dtype):
        return Opaque(f"dtype:{str(value).removeprefix('torch.')}")
    if isinstance(value, torch.device):
        return Opaque(f"device:{value}")
    if isinstance(value, (torch.layout, torch.memory_format)):
        return Opaque(f"torch:{str(value).removeprefix('torch.')}")
    if value is Ellipsis:
        return Opaque("ellipsis")
    token = _TOKENS.get(id(value))
    if token is None or _OBJECTS.get(token) is not value:
        token = f"handle:{len(_OBJECTS)}"
        _OBJECTS[token] = value
        _TOKENS[id(value)] = token
    return Opaque(token)


def resolve_opaque(token: Opaque) -> object:
    kind, _, rest = token.token.partition(":")
    if kind in ("dtype", "torch"):
        return getattr(torch, rest)
    if kind == "device":
        return torch.device(rest)
    if kind == "ellipsis":
        return Ellipsis
    if token.token in _OBJECTS:
        return _OBJECTS[token.token]
    raise UnresolvedHandle(
        f"constant {token.token!r} was made by another process; plan in the process that traced "
        "the model."
    )


__all__ = ["UnresolvedHandle", "function_name", "opaque", "resolve_function", "resolve_opaque"]
