"""Value info (kind, shape, dtype, bytes) of every traced node, from a run on fake tensors.

The real model never sees real data: inputs become fake tensors, and each traced graph is
interpreted with its traced children interpreted in turn, so nodes at every depth get info. The
interpreter keeps its own stack of calls (a generator per traced call, resumed by one loop), so
a chain of traced modules thousands deep costs no Python recursion, and each call costs its
own graph only (fx's Interpreter lists every module below the one it runs, at each level).
A leaf that cannot run on fake tensors (data-dependent control flow) is run once on zeros of
the right shapes instead. Leaf calls that must give the same shapes as an earlier one (the
next of many identical blocks) reuse its result (see `memo`).
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.fx.node import map_arg
from torch.utils._pytree import tree_map

from adapters.graph.convert import value_info
from adapters.graph.memo import MISSING, LeafMemo
from core import ValueInfo
from adapters.graph.module_tree import named_tensors
from core.snapshot import join

InfoTable = dict[tuple[str, str], ValueInfo]


def propagate_info(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    graphs: Mapping[str, fx.Graph],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> InfoTable:
    """(module path, node name) -> ValueInfo for every node of every traced graph."""
    infos: InfoTable = {}
    if "" not in graphs:
        return infos
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_args, fake_kwargs = tree_map(lambda v: _fake(mode, v), (args, dict(kwargs)))
    # Forwards update buffers in place (BatchNorm's statistics and counter), on fake tensors
    # too, and the zeros fallback runs leaves for real: put every buffer back afterwards.
    saved = [(b, b.detach().clone()) for _, b in named_tensors(model, "_buffers")]
    try:
        with mode:
            _run(_Context(modules, graphs, infos, mode, LeafMemo()), fake_args, fake_kwargs)
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return infos


def _fake(mode: FakeTensorMode, value: Any) -> Any:
    return mode.from_tensor(value) if isinstance(value, torch.Tensor) else value


def _zeros(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=value.dtype)
    return value


class _Call(NamedTuple):
    """A traced module's graph asks for the result of a traced callee."""

    path: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class _Context:
    modules: Mapping[str, nn.Module]
    graphs: Mapping[str, fx.Graph]
    infos: InfoTable
    mode: FakeTensorMode
    memo: LeafMemo
    last_uses: dict[str, dict[fx.Node, list[fx.Node]]] = field(default_factory=dict)


def _run(ctx: _Context, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Interpret the root's graph and, in turn, every traced callee's: a stack of generators,
    each paused at the call of a traced callee until the callee's returns its result."""
    stack = [_interpret(ctx, "", args, kwargs)]
    sent: Any = None
    while True:
        try:
            call = stack[-1].send(sent)
        except StopIteration as done:
            stack.pop()
            if not stack:
                return done.value
            sent = done.value
            continue
        stack.append(_interpret(ctx, call.path, call.args, call.kwargs))
        sent = None


def _interpret(ctx: _Context, path: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Generator[_Call, Any, Any]:
    """One traced call, as fx's Interpreter runs it (values freed after their last use); each
    node's value info goes to `ctx.infos`."""
    module, graph = ctx.modules[path], ctx.graphs[path]
    last_uses = ctx.last_uses.get(path)
    if last_uses is None:
        last_uses = ctx.last_uses[path] = _last_uses(graph)
    inputs = iter(_bind(path, module, graph, args, kwargs))
    env: dict[fx.Node, Any] = {}
    load = env.__getitem__
    for node in graph.nodes:
        if node.op == "placeholder":
            value = next(inputs)
        elif node.op == "output":
            value = map_arg(node.args[0], load)
        else:
            node_args = map_arg(node.args, load)
            node_kwargs = map_arg(node.kwargs, load)
            if node.op == "get_attr":
                value = _fetch(module, str(node.target))
            elif node.op == "call_function":
                value = node.target(*node_args, **node_kwargs)
            elif node.op == "call_method":
                self_obj, *rest = node_args
                value = getattr(self_obj, str(node.target))(*rest, **node_kwargs)
            else:
                callee = join(path, str(node.target))
                if callee in ctx.graphs:
                    value = yield _Call(callee, tuple(node_args), dict(node_kwargs))
                else:
                    value = _leaf(ctx, callee, tuple(node_args), dict(node_kwargs))
        ctx.infos[(path, node.name)] = value_info(value)
        if node.op == "output":
            return value
        env[node] = value
        for dead in last_uses.get(node, ()):
            del env[dead]
    return None


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """node -> the values whose last use it is (fx's Interpreter frees them after it runs)."""
    seen: set[fx.Node] = set()
    out: dict[fx.Node, list[fx.Node]] = {}
    for node in reversed(graph.nodes):
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                out.setdefault(node, []).append(used)
    return out


def _fetch(module: nn.Module, target: str) -> Any:
    value: Any = module
    for i, atom in enumerate(parts := target.split(".")):
        if not hasattr(value, atom):
            raise RuntimeError(f"Node referenced nonexistent target {'.'.join(parts[: i + 1])}")
        value = getattr(value, atom)
    return value


def _bind(path: str, module: nn.Module, graph: fx.Graph, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
    """One value per placeholder, bound as Python binds the arguments to the module's forward."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    try:
        binding = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        binding = None
    if binding is not None:
        binding.apply_defaults()
        values = binding.arguments
        names = [str(ph.target).lstrip("*") for ph in placeholders]
        if all(name in values for name in names):
            return [values[name] for name in names]
    # A forward whose signature is not its code's (a wrapper): by position, name, default.
    bound: list[Any] = []
    for i, ph in enumerate(placeholders):
        if i < len(args):
            bound.append(args[i])
        elif ph.target in kwargs:
            bound.append(kwargs[str(ph.target)])
        elif ph.args:
            bound.append(ph.args[0])
        else:
            raise TypeError(f"{path or '<root>'}: no example value for parameter {ph.target!r}")
    return bound


def _leaf(ctx: _Context, callee: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A call of an untraced module: its result on fake tensors, memoized (see `memo`)."""
    module = ctx.modules[callee]
    key = ctx.memo.key(module, args, kwargs)
    if key is not None and (known := ctx.memo.get(key)) is not MISSING:
        return known
    try:
        result = module(*args, **kwargs)
    except Exception:  # data-dependent control flow cannot run on fake tensors
        with unset_fake_temporarily(), torch.no_grad():
            real = module(*tree_map(_zeros, args), **tree_map(_zeros, kwargs))
        return tree_map(lambda v: _fake(ctx.mode, v), real)
    if key is not None:
        ctx.memo.put(key, result)
    return result
