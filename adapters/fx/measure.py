"""The `measured` cost model: each module's forward + backward time on example inputs.

Hooks time every module call (children included) in the forward and in the backward of a
scalar made from the outputs, over a few runs after one warm-up; a module's figure is the
median over the runs. Core prices the table with `core.costs.by_module`, which charges a
module that stays whole in a stage with its figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from adapters.graph.deep import run_deep
from adapters.graph.module_tree import named_tensors, tree_depth, walk_modules

REPEATS = 3


def module_seconds(
    model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], repeats: int = REPEATS, backward: bool = True
) -> dict[str, float]:
    """Module path -> median seconds of its forward (+ backward) per run; modules never called
    are left out. Gradients and buffers are as they were afterwards."""
    modules = list(walk_modules(model))
    depth = tree_depth(model)  # torch's own walks recurse once per level
    paths = {id(m): path for path, m in modules}
    started: dict[tuple[int, str], list[float]] = {}
    run: dict[str, float] = {}

    def opener(phase: str) -> Any:
        def hook(module: nn.Module, *_: Any) -> None:
            started.setdefault((id(module), phase), []).append(time.perf_counter())

        return hook

    def closer(phase: str) -> Any:
        def hook(module: nn.Module, *_: Any) -> None:
            stack = started.get((id(module), phase))
            if stack:  # a backward hook may fire without its pre-hook for inputs without grad
                path = paths[id(module)]
                run[path] = run.get(path, 0.0) + time.perf_counter() - stack.pop()

        return hook

    hooks = []
    for _, module in modules:
        hooks += [module.register_forward_pre_hook(opener("fwd")), module.register_forward_hook(closer("fwd"))]
        if backward:
            hooks += [
                module.register_full_backward_pre_hook(opener("bwd")),
                module.register_full_backward_hook(closer("bwd")),
            ]
    params = [p for _, p in named_tensors(model, "_parameters")]
    grads = {id(p): None if p.grad is None else p.grad.clone() for p in params}
    buffers = [(b, b.detach().clone()) for _, b in named_tensors(model, "_buffers")]
    samples: dict[str, list[float]] = {}
    try:
        for i in range(repeats + 1):  # the first run warms up the allocator and lazy init
            run.clear()
            started.clear()
            run_deep(depth, lambda: _step(model, args, kwargs, backward), what=f"{type(model).__name__}.forward (while timing it)")
            if i:
                for path, seconds in run.items():
                    samples.setdefault(path, []).append(seconds)
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for p in params:
                p.grad = grads.get(id(p))
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return {path: statistics.median(values) for path, values in samples.items()}


def _step(model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], backward: bool) -> None:
    with torch.set_grad_enabled(backward):
        out = model(*args, **kwargs)
        if backward:
            leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
            if leaves:
                torch.autograd.backward([t.sum() for t in leaves])
