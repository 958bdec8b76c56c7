"""The model's module tree as core `Module`s: parameters with storage keys, graphs, leaf reasons.

Every walk here is iterative (an explicit stack) and visits each module once per path, so a
module tree thousands of levels deep costs time linear in its size and no recursion; torch's
own `named_modules`/`named_parameters` recurse once per level (generators nested as deep as
the tree, each item passed up through all of them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pyrsistent import pmap
from torch import Tensor, nn

from core import Graph, Module, Param
from core.snapshot import join

NOT_ON_SPINE = "not traced: snapshot(cuts=...) traces only the modules on the way to a cut"


def walk_modules(model: nn.Module, *, remove_duplicate: bool = True, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """`model.named_modules(remove_duplicate=...)`, in the same order (depth first, children in
    registration order), without recursion. With `remove_duplicate=False` a shared module is
    listed under every path it is reachable by; a module that contains itself is a ValueError
    (torch's own walk never ends)."""
    seen: set[int] = set()
    ancestors: list[int] = []  # the ids on the way from `model` to the current module
    on_path: set[int] = set()
    stack: list[tuple[int, str, nn.Module]] = [(0, prefix, model)]
    while stack:
        level, path, module = stack.pop()
        if remove_duplicate:
            if id(module) in seen:
                continue
            seen.add(id(module))
        else:
            while len(ancestors) > level:
                on_path.discard(ancestors.pop())
            if id(module) in on_path:
                raise ValueError(f"the module at {path!r} contains itself: the module tree has a cycle")
            ancestors.append(id(module))
            on_path.add(id(module))
        yield path, module
        children = [(level + 1, join(path, name), child) for name, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))


def named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module under every path it is reachable by (a shared module has several)."""
    return walk_modules(model, remove_duplicate=False)


def tree_depth(model: nn.Module) -> int:
    """The number of levels below `model` (0 for a module without children), iteratively."""
    deepest = 0
    stack: list[tuple[int, nn.Module]] = [(0, model)]
    seen: set[int] = set()
    while stack:
        level, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        deepest = max(deepest, level)
        stack.extend((level + 1, child) for child in module._modules.values() if child is not None)
    return deepest


def named_tensors(model: nn.Module, table: str) -> Iterator[tuple[str, Tensor]]:
    """`named_parameters`/`named_buffers(remove_duplicate=False)` (`table` is "_parameters" or
    "_buffers"): every tensor under every path, in torch's order, without recursion."""
    for path, module in walk_modules(model, remove_duplicate=False):
        for name, tensor in getattr(module, table).items():
            if tensor is not None:
                yield join(path, name), tensor


def storage_keys(model: nn.Module) -> dict[int, str]:
    """id(tensor) -> a canonical key, equal for tensors sharing storage (tied weights)."""
    by_storage: dict[tuple[Any, ...], str] = {}
    keys: dict[int, str] = {}
    named = [*named_tensors(model, "_parameters"), *named_tensors(model, "_buffers")]
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
    or was never called by a traced module. Built bottom up, without recursion."""
    keys = storage_keys(model)
    order = list(named_modules(model))  # parents before their children
    built: dict[str, Module] = {}
    shared = interned(graphs)
    for path, module in reversed(order):  # children before their parents
        children = {
            name: built.pop(join(path, name)) for name, child in module._modules.items() if child is not None
        }
        built[path] = _module(module, path, shared, reasons, keys, by_need, children)
    return built[""]


def interned(graphs: Mapping[str, Graph]) -> dict[str, Graph]:
    """The graphs with equal ones made one object: the blocks of a stack trace to equal graphs
    (paths are relative), and sharing them lets every pass that memoizes per graph object
    (the figures' structure numbers) see a thousand blocks as one, and keeps one copy in memory
    and in pickles sent to ranks."""
    first: dict[Graph, Graph] = {}
    return {path: first.setdefault(graph, graph) for path, graph in graphs.items()}


def _module(
    module: nn.Module,
    path: str,
    graphs: Mapping[str, Graph],
    reasons: Mapping[str, str],
    keys: dict[int, str],
    by_need: bool,
    children: dict[str, Module],
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
        children=pmap(children),
        params=pmap(params),
        leaf_reason=reason,
    )
