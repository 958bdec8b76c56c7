"""Value info (kind, shape, dtype, bytes) of every traced node, from a run on fake tensors.

The real model never sees real data: inputs become fake tensors, and each traced graph is
interpreted with its traced children interpreted recursively, so nodes at every depth get info.
A leaf that cannot run on fake tensors (data-dependent control flow) is run once on zeros of
the right shapes instead. Leaf calls that must give the same shapes as an earlier one (the
next of many identical blocks) reuse its result (see `memo`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._pytree import tree_map

from adapters.graph.convert import value_info
from adapters.graph.memo import MISSING, LeafMemo
from core import ValueInfo
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
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with mode:
            _Recorder("", modules, graphs, infos, mode, LeafMemo()).run_bound(fake_args, fake_kwargs)
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


class _Recorder(fx.Interpreter):
    def __init__(
        self,
        path: str,
        modules: Mapping[str, nn.Module],
        graphs: Mapping[str, fx.Graph],
        infos: InfoTable,
        mode: FakeTensorMode,
        memo: LeafMemo,
    ) -> None:
        super().__init__(modules[path], garbage_collect_values=True, graph=graphs[path])
        self.path, self.modules, self.graphs, self.infos, self.mode = path, modules, graphs, infos, mode
        self.memo = memo

    def run_bound(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run with args bound to placeholders as Python binds them to the module's forward."""
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        try:
            binding = inspect.signature(self.module.forward).bind(*args, **kwargs)
        except (TypeError, ValueError):
            binding = None
        if binding is not None:
            binding.apply_defaults()
            values = binding.arguments
            names = [str(ph.target).lstrip("*") for ph in placeholders]
            if all(name in values for name in names):
                return self.run(*(values[name] for name in names))
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
                raise TypeError(f"{self.path or '<root>'}: no example value for parameter {ph.target!r}")
        return self.run(*bound)

    def placeholder(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # One bound value per placeholder: fx's own gives `*args` and `**kwargs` all that is left.
        return next(self.args_iter)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.infos[(self.path, n.name)] = value_info(result)
        return result

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        callee = join(self.path, str(target))
        if callee in self.graphs:
            recorder = _Recorder(callee, self.modules, self.graphs, self.infos, self.mode, self.memo)
            return recorder.run_bound(args, kwargs)
        key = self.memo.key(self.modules[callee], args, kwargs)
        if key is not None and (known := self.memo.get(key)) is not MISSING:
            return known
        try:
            result = super().call_module(target, args, kwargs)
        except Exception:  # data-dependent control flow cannot run on fake tensors
            with unset_fake_temporarily(), torch.no_grad():
                real = self.modules[callee](*tree_map(_zeros, args), **tree_map(_zeros, kwargs))
            return tree_map(lambda v: _fake(self.mode, v), real)
        if key is not None:
            self.memo.put(key, result)
        return result
