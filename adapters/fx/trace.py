"""`snapshot_fx(model, ...)`: hierarchical tracing of an nn.Module into a core `Snapshot`.

Each module is traced on its own with its children as leaves, so every traced module has a
graph of its own and cuts can sit at any depth. A module that fx cannot trace becomes a leaf
that records why. With `cuts=`, only the modules on the way from each cut to the root are
traced ("trace by need"), which is what keeps large models fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyrsistent import pmap
from torch import fx, nn
from torch.fx import _symbolic_trace as fx_symbolic_trace

from adapters.graph.convert import node_to_core
from adapters.graph.module_tree import NOT_ON_SPINE, module_tree, named_modules, walk_modules
from adapters.fx.bind import example_bindings, restore_names
from adapters.graph.guards import check_mode
from adapters.graph.training_reads import watch_training
from adapters.fx.shapes import propagate_info
from core import Cut, Graph, Module, Param, Snapshot
from core.cuts import CutLike, as_cut
from core.snapshot import join

LeafSpec = type[nn.Module] | str
Progress = Callable[[str], None]

BUILTIN = "a torch.nn built-in module"
LISTED = "listed in leaf_modules"


class _ChildrenAreLeaves(fx.Tracer):
    """Traces one module; every submodule call stays a call_module node.

    fx's `trace` walks the whole tree below the module it traces, recursively (its paths of
    submodules, its table of tensor attributes): done for every module of a chain, that is
    quadratic in the depth and stops at Python's recursion limit. Here those walks stop at the
    module's children (all that a call_module node or an attribute read usually needs), and the
    rest of the tree is walked, iteratively, only when something deeper is asked for."""

    def __init__(self, traced: nn.Module) -> None:
        super().__init__()
        self._traced = traced
        # Buffers as graph values: an in-place update (`self.step.add_(1)`) is recorded, not
        # run on the real buffer while tracing.
        self.proxy_buffer_attributes = True
        self._all_paths: dict[nn.Module, str] | None = None
        self._deep_attrs = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._traced

    def trace(self, root: nn.Module | Callable[..., Any], concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if not isinstance(root, nn.Module):
            return super().trace(root, concrete_args)
        with _shallow_walks(root):
            return super().trace(root, concrete_args)

    def path_of_module(self, mod: nn.Module) -> str:
        known = self.submodule_paths.get(mod) if self.submodule_paths else None
        if known is not None:
            return known
        if self._all_paths is None:  # a module below the children: walk the whole tree once
            self._all_paths = {}
            for path, module in walk_modules(self.root):
                self._all_paths.setdefault(module, path)
        found = self._all_paths.get(mod)
        if found is None:
            raise NameError("module is not installed as a submodule")
        return found

    def create_arg(self, a: Any) -> Any:
        if not self._deep_attrs and isinstance(a, _CONSTANT_TYPES) and a not in self.tensor_attrs:
            # A tensor attribute of a module below the children: add those of the whole tree.
            self._deep_attrs = True
            for path, module in walk_modules(self.root, remove_duplicate=False):
                if path.count(".") >= 1:  # the root's and the children's are there already
                    for name, value in module.__dict__.items():
                        if isinstance(value, _CONSTANT_TYPES):
                            self.tensor_attrs.setdefault(value, join(path, name))  # type: ignore[arg-type]
        return super().create_arg(a)


_CONSTANT_TYPES: tuple[type, ...] = tuple(getattr(fx_symbolic_trace, "_constant_attribute_types", (torch.Tensor,)))


@contextmanager
def _shallow_walks(root: nn.Module) -> Iterator[None]:
    """While `root` is traced, the first `root.named_modules()` (fx's table of submodule paths)
    lists the root and its children only, and the first `child.named_children()` of each child
    (fx's recursive search for tensor attributes) lists nothing. Each is the instance's own
    attribute, removed when called once and in any case on exit: the model's code (which runs
    after both) sees the real methods."""
    shallow = [("", root)]
    seen = {id(root)}
    for name, child in root._modules.items():
        if child is not None and id(child) not in seen:
            seen.add(id(child))
            shallow.append((name, child))
    patched: list[tuple[nn.Module, str, Any]] = []

    def once(module: nn.Module, method: str, items: list[tuple[str, nn.Module]]) -> None:
        def call(*args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Module]]:
            module.__dict__.pop(method, None)
            if args or kwargs:  # not fx's call: the real walk
                return getattr(module, method)(*args, **kwargs)  # type: ignore[no-any-return]
            return iter(items)

        if method not in module.__dict__:
            module.__dict__[method] = call
            patched.append((module, method, call))

    once(root, "named_modules", shallow)
    for _, child in shallow[1:]:
        if child is not root:
            once(child, "named_children", [])
    try:
        yield
    finally:
        for module, method, call in patched:
            if module.__dict__.get(method) is call:
                del module.__dict__[method]


def snapshot_fx(
    model: nn.Module,
    *example_args: Any,
    leaf_modules: Iterable[LeafSpec] = (),
    cuts: Sequence[CutLike] | None = None,
    progress: Progress | None = None,
    **example_kwargs: Any,
) -> Snapshot:
    """Trace `model` into a `Snapshot`; with example inputs, add value info (on fake tensors)."""
    modules = dict(named_modules(model))
    leaves = tuple(leaf_modules)
    graphs: dict[str, fx.Graph] = {}
    reasons: dict[str, str] = {}
    wanted = None if cuts is None else [as_cut(c).path for c in cuts]
    has_example = bool(example_args or example_kwargs)
    bindings = example_bindings(model, modules, example_args, example_kwargs) if has_example else {}

    todo = [""]  # depth first, as the calls are met; an explicit stack, not recursion
    while todo:
        path = todo.pop()
        if path in graphs or path in reasons:
            continue
        reason = _static_leaf_reason(path, modules[path], leaves)
        if reason is not None:
            reasons[path] = reason
            continue
        if progress is not None:
            progress(path or "<root>")
        try:
            graphs[path] = _trace_one(path, modules[path], bindings.get(path) or {})
        except Exception as err:  # fx raises many kinds; all mean "not traceable"
            reasons[path] = _first_line(f"fx could not trace it: {type(err).__name__}: {err}")
            continue
        callees = [
            callee
            for callee in _callees(path, graphs[path])
            # By need: trace a callee only when a cut lies strictly inside it.
            if callee in modules and (wanted is None or any(p.startswith(callee + ".") for p in wanted))
        ]
        todo.extend(reversed(callees))

    infos = propagate_info(model, modules, graphs, example_args, example_kwargs) if has_example else {}
    core_graphs = {
        path: Graph(tuple(node_to_core(n, infos.get((path, n.name))) for n in graph.nodes))
        for path, graph in graphs.items()
    }
    return Snapshot(module_tree(model, core_graphs, reasons, wanted is not None), "fx")


def _trace_one(path: str, module: nn.Module, concrete: dict[str, Any]) -> fx.Graph:
    """One module's graph; guarded by `check_mode` when its graph depends on the mode."""
    with watch_training(module) as reads:
        graph = _ChildrenAreLeaves(module).trace(module, concrete_args=concrete or None)
    restore_names(graph, module, concrete)
    if reads:  # the code reads self.training: does the other mode trace differently?
        mode = module.training
        module.__dict__["training"] = not mode
        try:
            other = _ChildrenAreLeaves(module).trace(module, concrete_args=concrete or None)
        finally:
            module.__dict__["training"] = mode
        restore_names(other, module, concrete)
        if str(other) != str(graph):
            last = [n for n in graph.nodes if n.op == "placeholder"]
            where = graph.inserting_after(last[-1]) if last else graph.inserting_before(next(iter(graph.nodes)))
            with where:
                graph.call_function(check_mode, (path, bool(mode)))
    return graph


def _static_leaf_reason(path: str, module: nn.Module, leaves: Sequence[LeafSpec]) -> str | None:
    if any(leaf == path or (isinstance(leaf, type) and isinstance(module, leaf)) for leaf in leaves):
        return LISTED
    cls = type(module)
    if cls.__module__.startswith("torch.nn") and not isinstance(module, nn.Sequential):
        return BUILTIN
    return None


def _callees(path: str, graph: fx.Graph) -> list[str]:
    return [join(path, str(n.target)) for n in graph.nodes if n.op == "call_module"]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else text


__all__ = ["snapshot_fx"]
