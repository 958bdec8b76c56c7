"""Containers crossing a boundary travel as their leaves.

A value that crosses a stage boundary whole as a container (a tuple of tensors such as T5's
`self_out[1:]`, a list, a dict, nested, with Python scalars, `torch.Size` and `None` inside)
is sent as its pytree leaves, each with its own wire format; the receiver rebuilds it, dict
keys and all. `flatten_trees` does this once, from one example run, by wrapping the stage
modules (the sender returns the leaves in place of the container, the receiver takes the
leaves and rebuilds it) and renaming the plan's boundary values to match (`name[0]`,
`name['key']`...), so each engine's codec sees only leaves. The model's inputs (stage 0) and
the last stage's output are left as they are: the engines handle those already.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import TreeSpec, tree_flatten_with_path, tree_leaves, tree_unflatten, keystr

from adapters.engine.inputs import FirstInputs, bind_inputs, microbatch
from adapters.engine.run import example_run
from core import Plan


class Rebuild:
    """`tree_unflatten(leaves, spec)` as a call target of generated code."""

    __name__ = "rebuild"
    __qualname__ = "rebuild"
    __module__ = "adapters.engine.trees"

    def __init__(self, spec: TreeSpec) -> None:
        self.spec = spec

    def __call__(self, *leaves: Any) -> Any:
        return tree_unflatten(list(leaves), self.spec)


def is_container(value: Any) -> bool:
    """A value the codec cannot move as one wire: a tuple, list or dict, except a plain tuple
    of ints or a `torch.Size` (those travel as one int tensor)."""
    if isinstance(value, torch.Size):
        return False
    if type(value) is tuple and all(type(v) is int for v in value):
        return False
    return isinstance(value, (tuple, list, dict))


def flatten_trees(plan: Plan, modules: Sequence[fx.GraphModule], inputs: Sequence[Any]) -> tuple[Plan, list[fx.GraphModule]]:
    """`plan` and `modules` with every container crossing a boundary replaced by its leaves;
    unchanged when none does. `inputs`: one microbatch of stage 0's inputs."""
    run = example_run(modules, inputs)
    last = len(plan.stages) - 1
    specs: list[dict[int, tuple[TreeSpec, list[str]]]] = [{} for _ in plan.stages]  # stage -> input -> tree
    for s in range(1, last + 1):
        for i, (value, name) in enumerate(zip(run.inputs[s], plan.stages[s].inputs)):
            if is_container(value):
                paths, spec = tree_flatten_with_path(value)
                specs[s][i] = (spec, [f"{name}{keystr(path)}" for path, _ in paths])
    if not any(specs):
        return plan, list(modules)
    stages = []
    wrapped: list[fx.GraphModule] = []
    for s, stage in enumerate(plan.stages):
        sends = specs[s + 1] if s < last else {}
        inputs_named = _expand(stage.inputs, specs[s])
        outputs_named = _expand(stage.outputs, sends) if s < last else stage.outputs
        stages.append(dataclasses.replace(stage, inputs=inputs_named, outputs=outputs_named))
        wrapped.append(_wrap(modules[s], stage.inputs, specs[s], sends) if specs[s] or sends else modules[s])
    return dataclasses.replace(plan, stages=tuple(stages)), wrapped


def _expand(names: Sequence[str], trees: dict[int, tuple[TreeSpec, list[str]]]) -> tuple[str, ...]:
    out: list[str] = []
    for i, name in enumerate(names):
        out.extend(trees[i][1] if i in trees else [name])
    return tuple(out)


def _wrap(
    inner: nn.Module,
    names: Sequence[str],
    received: dict[int, tuple[TreeSpec, list[str]]],
    sent: dict[int, tuple[TreeSpec, list[str]]],
) -> fx.GraphModule:
    graph = fx.Graph()
    args: list[Any] = []
    for i, name in enumerate(names):
        if i in received:
            spec, leaf_names = received[i]
            received_leaves = [graph.placeholder(f"in{i}_{j}") for j in range(len(leaf_names))]
            args.append(graph.call_function(Rebuild(spec), tuple(received_leaves)))
        else:
            args.append(graph.placeholder(f"in{i}"))
    result = graph.call_module("inner", tuple(args))
    if sent:
        count = max(sent) + 1
        items = [graph.call_function(operator.getitem, (result, i)) for i in range(count)]
        flat: list[Any] = []
        for i, item in enumerate(items):
            if i in sent:
                leaves = graph.call_function(tree_leaves, (item,))
                flat.extend(graph.call_function(operator.getitem, (leaves, j)) for j in range(len(sent[i][1])))
            else:
                flat.append(item)
        rest = graph.call_function(operator.getitem, (result, slice(count, None)))
        graph.output(graph.call_function(operator.add, (tuple(flat), rest)))
    else:
        graph.output(result)
    root = nn.Module()
    root.add_module("inner", inner)
    return fx.GraphModule(root, graph, class_name=f"Leaves{type(inner).__name__}")


def engine_stages(
    plan: Plan,
    model: nn.Module,
    example_args: Sequence[Any],
    example_kwargs: Mapping[str, Any] | None,
    replicate: Collection[str],
    num_microbatches: int,
    trusted_modules: Collection[str] = (),
) -> tuple[Plan, list[fx.GraphModule], list[Any], frozenset[str]]:
    """What both engines start from: the stage modules (containers crossing as leaves, and the
    plan renamed to match), one microbatch of stage 0's inputs, and the inputs that go whole.
    `trusted_modules` as for `stage_modules` (a plan read from JSON)."""
    from adapters.graph.stages import stage_modules

    modules = stage_modules(plan, model, trusted_modules=trusted_modules)
    first = plan.stages[0]
    inputs = bind_inputs(first, example_args, example_kwargs or {})
    keywords = FirstInputs.of(first, inputs, replicate).keywords
    one = microbatch(inputs, first.inputs, keywords, num_microbatches)
    leaves_plan, leaf_modules = flatten_trees(plan, modules, one)
    return leaves_plan, leaf_modules, one, keywords
