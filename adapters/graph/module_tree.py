"""The model's module tree as core `Module`s: parameters with storage keys, graphs, leaf reasons."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyrsistent import pmap
from torch import nn

from core import Graph, Module, Param
from core.snapshot import join

NOT_ON_SPINE = "not traced: snapshot(cuts=...) traces only the modules on the way to a cut"


def named_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """Every module under every path it is reachable by (a shared module has several)."""
    return model.named_modules(remove_duplicate=False)  # type: ignore[no-any-return]


def storage_keys(model: nn.Module) -> dict[int, str]:
    """id(tensor) -> a canonical key, equal for tensors sharing storage (tied weights)."""
    by_storage: dict[tuple[Any, ...], str] = {}
    keys: dict[int, str] = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for _, tensor in named:
        if tensor.device.type == "meta":
            identity: tuple[Any, ...] = ("id", id(tensor))
        else:
            identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        keys[id(tensor)] = by_storage.setdefault(identity, f"t{len(by_storage)}")
    return keys


def module_tree(
    model: nn.Module,
    graphs: Mapping[str, Graph],
    reasons: Mapping[str, str],
    by_need: bool,
) -> Module:
    """The core module tree of `model`; `graphs` holds the traced modules, `reasons` why others
    were not traced. An untraced module without a reason was not on the way to a cut (`by_need`)
    or was never called by a traced module."""
    keys = storage_keys(model)
    return _module(model, "", graphs, reasons, keys, by_need)


def _module(
    module: nn.Module,
    path: str,
    graphs: Mapping[str, Graph],
    reasons: Mapping[str, str],
    keys: dict[int, str],
    by_need: bool,
) -> Module:
    graph = graphs.get(path)
    reason = reasons.get(path)
    if graph is None and reason is None and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        reason = NOT_ON_SPINE if by_need else "never called by a traced module"
    params = {
        name: Param(keys[id(t)], t.numel(), t.numel() * t.element_size(), buffer=False)
        for name, t in module._parameters.items()
        if t is not None
    }
    params.update(
        (name, Param(keys[id(t)], t.numel(), t.numel() * t.element_size(), buffer=True))
        for name, t in module._buffers.items()
        if t is not None
    )
    return Module(
        path=path,
        type_name=type(module).__name__,
        graph=graph,
        children=pmap(
            {
                name: _module(child, join(path, name), graphs, reasons, keys, by_need)
                for name, child in module._modules.items()
                if child is not None
            }
        ),
        params=pmap(params),
        leaf_reason=reason,
    )
