"""Value info (kind, shape, dtype, bytes) of every traced node, from a run on fake tensors.

The real model never sees real data: inputs become fake tensors, and each traced graph is
interpreted with its traced children interpreted recursively, so nodes at every depth get info.
A leaf that cannot run on fake tensors (data-dependent control flow) is run once on zeros of
the right shapes instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._pytree import tree_map

from adapters.fx.convert import value_info
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
    with mode:
        _Recorder("", modules, graphs, infos, mode).run_bound(fake_args, fake_kwargs)
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
    ) -> None:
        super().__init__(modules[path], garbage_collect_values=True, graph=graphs[path])
        self.path, self.modules, self.graphs, self.infos, self.mode = path, modules, graphs, infos, mode

    def run_bound(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run with args bound to placeholders as Python would: position, name, default."""
        bound = []
        for i, ph in enumerate(n for n in self.graph.nodes if n.op == "placeholder"):
            if i < len(args):
                bound.append(args[i])
            elif ph.target in kwargs:
                bound.append(kwargs[str(ph.target)])
            elif ph.args:
                bound.append(ph.args[0])
        return self.run(*bound)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.infos[(self.path, n.name)] = value_info(result)
        return result

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        callee = join(self.path, str(target))
        if callee in self.graphs:
            return _Recorder(callee, self.modules, self.graphs, self.infos, self.mode).run_bound(args, kwargs)
        try:
            return super().call_module(target, args, kwargs)
        except Exception:  # data-dependent control flow cannot run on fake tensors
            with unset_fake_temporarily(), torch.no_grad():
                real = self.modules[callee](*tree_map(_zeros, args), **tree_map(_zeros, kwargs))
            return tree_map(lambda v: _fake(self.mode, v), real)
