"""The example run: the stage chain once on one microbatch, in this process, to decide how
each value crossing a boundary travels (`StageIO`). Buffers and the RNG are left as they were."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from adapters.engine.codec import StageIO, wire_format
from core import Plan


@dataclass(frozen=True)
class ExampleRun:
    """What each stage received (`inputs[s]`, in `plan.stages[s].inputs` order) and what the
    last stage returned, on one example microbatch."""

    inputs: list[list[Any]]
    output: Any


def example_run(
    modules: Sequence[nn.Module],
    inputs: Sequence[Any],
    *,
    grad: bool = False,
    receive: Callable[[int, list[Any]], list[Any]] | None = None,
) -> ExampleRun:
    """Run `modules` in a chain on `inputs` (stage 0's, one microbatch). Without `grad`, under
    `no_grad`. `receive(s, values)` may replace what stage `s` gets (an engine marking which
    received values carry gradients)."""
    received: list[list[Any]] = []
    current: list[Any] = list(inputs)
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        with torch.set_grad_enabled(grad), torch.random.fork_rng(devices=[]):
            for s, module in enumerate(modules):
                if receive is not None:
                    current = receive(s, current)
                received.append(current)
                output = module(*current)
                current = list(output) if s < len(modules) - 1 else output
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return ExampleRun(received, current)


def stage_ios(plan: Plan, run: ExampleRun, keywords: Collection[str] = ()) -> list[StageIO]:
    """Each stage's codec from the example run. `keywords`: stage 0's inputs that arrive whole
    (`FirstInputs.keywords`)."""
    ios = []
    for s, stage in enumerate(plan.stages):
        formats = tuple(wire_format(v, n) for v, n in zip(run.inputs[s], stage.inputs))
        keyword = tuple(n for n in stage.inputs if n in keywords) if s == 0 else ()
        is_last = s == len(plan.stages) - 1
        if is_last:
            sent, tree = tree_flatten(run.output)
            names = [f"output leaf {i}" for i in range(len(sent))]
        else:
            sent, tree, names = run.inputs[s + 1], None, list(plan.stages[s + 1].inputs)
        out_formats = tuple(wire_format(v, n) for v, n in zip(sent, names))
        constants = tuple(None if f.travels else v for v, f in zip(sent, out_formats)) if is_last else ()
        ios.append(StageIO(formats, out_formats, tree, constants, keyword))
    return ios
