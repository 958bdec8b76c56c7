"""`--cost measured`: how long each module's forward takes on the example inputs.

Forward hooks time every call (children included) in a few runs under `torch.no_grad()`
after one warm-up run; a module's figure is the median over the runs of its summed calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

REPEATS = 3


def module_seconds(
    model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], repeats: int = REPEATS
) -> dict[str, float]:
    """Module path -> median seconds of its forward per run (modules never called are left out)."""
    paths = {id(m): path for path, m in model.named_modules()}
    started: dict[int, list[float]] = {}
    run: dict[str, float] = {}

    def before(module: nn.Module, _: Any) -> None:
        started.setdefault(id(module), []).append(time.perf_counter())

    def after(module: nn.Module, _: Any, __: Any) -> None:
        elapsed = time.perf_counter() - started[id(module)].pop()
        path = paths[id(module)]
        run[path] = run.get(path, 0.0) + elapsed

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    samples: dict[str, list[float]] = {}
    try:
        with torch.no_grad():
            model(*args, **kwargs)  # warm-up: allocator, lazy initialisation
            for _ in range(repeats):
                run.clear()
                model(*args, **kwargs)
                for path, seconds in run.items():
                    samples.setdefault(path, []).append(seconds)
    finally:
        for hook in hooks:
            hook.remove()
    return {path: statistics.median(values) for path, values in samples.items()}
