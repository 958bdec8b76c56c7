"""Bind the example call: the non-tensor arguments each module actually receives.

fx traces a parameter the caller did not pass (`forward(x, scale=None)` called as `model(x)`)
as a placeholder, so `if scale is not None` is decided wrongly at trace time. One run of the
model on fake tensors, with a pre-hook on every module that may be traced, records each
module's arguments as Python binds them; the non-tensor ones (`None`, bools, numbers,
strings, defaults included; floats stay inputs) become fx `concrete_args`. fx then traces the branch the example
takes and guards the value: a stage called with another value raises an error naming the
argument. A value that differs between two calls of one module is not fixed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from adapters.graph.module_tree import named_tensors

Concrete = dict[str, Any]  # parameter name -> the value every call gave it
# Values that choose branches. Floats stay inputs: they scale, they rarely branch.
_SIMPLE = (type(None), bool, int, str)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_UNFIXED = object()  # two calls disagreed


def example_bindings(
    model: nn.Module, modules: Mapping[str, nn.Module], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Concrete]:
    """module path -> its non-tensor arguments in the example call (see the module doc)."""
    found: dict[str, dict[str, Any]] = {}
    handles = []
    for path, module in modules.items():
        if _is_builtin(module):
            continue
        handles.append(module.register_forward_pre_hook(_recorder(path, module, found), with_kwargs=True))
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    saved = [(b, b.detach().clone()) for _, b in named_tensors(model, "_buffers")]
    try:
        fake_args, fake_kwargs = tree_map(lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v, (args, dict(kwargs)))
        with torch.random.fork_rng(devices=[]), mode:
            model(*fake_args, **fake_kwargs)
    except Exception:  # noqa: S110 - code that cannot run on fake tensors: keep what was seen
        pass
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return {path: {k: v for k, v in values.items() if v is not _UNFIXED} for path, values in found.items()}


def _recorder(path: str, module: nn.Module, found: dict[str, dict[str, Any]]) -> Any:
    try:
        signature: inspect.Signature | None = inspect.signature(module.forward)
    except (TypeError, ValueError):
        signature = None

    if signature is not None and any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()):
        signature = None  # fx cannot fix arguments of a forward with `*args`: traced as before

    def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if signature is None:
            return
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return
        values: dict[str, Any] = {}
        for name, parameter in signature.parameters.items():
            if parameter.kind in _VARIADIC:
                continue
            if name in bound.arguments:
                value = bound.arguments[name]
            elif parameter.default is not inspect.Parameter.empty:
                value = parameter.default
            else:
                continue
            if type(value) in _SIMPLE:
                values[name] = value
        seen = found.get(path)
        if seen is None:
            found[path] = values
            return
        for name, value in values.items():
            if name in seen and (type(seen[name]) is not type(value) or seen[name] != value):
                seen[name] = _UNFIXED
        for name in set(seen) - set(values):
            seen[name] = _UNFIXED

    return hook


def restore_names(graph: fx.Graph, module: nn.Module, concrete: Concrete) -> None:
    """fx renames a concrete parameter's placeholder (`scale` -> `scale_1`); give each
    placeholder its parameter's name back, so callers bind by name as before."""
    if not concrete:
        return
    try:
        names = [n for n, p in inspect.signature(module.forward).parameters.items() if p.kind not in _VARIADIC]
    except (TypeError, ValueError):
        return
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(names) or any(str(p.target).startswith("*") for p in placeholders):
        return
    for node, name in zip(placeholders, names):
        node.target = name
        if node.name != name:
            node._rename(name)  # the value keeps the parameter's name too (fx adds `_1` otherwise)


def _is_builtin(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn") and not isinstance(module, nn.Sequential)
