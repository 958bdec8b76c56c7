"""Plan -> one fx GraphModule per stage, sharing parameters and buffers with the model."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

from torch import fx, nn

from adapters.graph.convert import arg_to_fx, call_target
from adapters.graph.deep import run_deep
from adapters.graph.guards import MODE_CHECK, ModeCheck
from adapters.graph.handles import admit_graph
from adapters.graph.hooks import transfer_root_hooks, warn_dropped_hooks
from adapters.graph.plan_fit import check_plan_fits
from core import Node, Plan, Stage

_NOT_IDENTIFIER = re.compile(r"\W")
_NO_DEFAULT: Any = inspect.Signature.empty  # fx's marker for a parameter without default


def stage_modules(plan: Plan, model: nn.Module, *, trusted_modules: Iterable[str] = ()) -> list[fx.GraphModule]:
    """The stages as modules: `forward(*stage.inputs)` returns `stage.outputs` as a tuple;
    the last stage returns what the model returns. Parameters are the model's own (no copies).
    The root's hooks move to the first and last stage (see `hooks`).

    A plan read from JSON (or planned from a snapshot that was) is checked first, every stage
    before any is built: its functions must be on the allow-list or in `trusted_modules`
    (`UntrustedTarget` otherwise; see `adapters.graph.handles.admit_graph`), and must fit the
    model: every attribute it reads the model's, with the recorded shape, every stage's
    parameters as many (`PlanDoesNotFit` otherwise; `adapters.graph.plan_fit`)."""
    trusted = tuple(trusted_modules)
    for stage in plan.stages:
        admit_graph(stage.graph, first=stage.index == 0, trusted_modules=trusted, where=f"stage {stage.index}")
    check_plan_fits(plan, model)
    modules = [stage_module(stage, model, trusted_modules=trusted) for stage in plan.stages]
    transfer_root_hooks(model, modules)
    warn_dropped_hooks(plan, model)
    return modules


def stage_module(stage: Stage, model: nn.Module, *, trusted_modules: Iterable[str] = ()) -> fx.GraphModule:
    admitted = admit_graph(stage.graph, first=stage.index == 0, trusted_modules=trusted_modules, where=f"stage {stage.index}")
    graph = fx.Graph()
    env: dict[str, Any] = {}
    taken: set[str] = set()
    nodes = _in_call_order(stage.graph.nodes, model) if stage.index == 0 else stage.graph.nodes
    for node in nodes:
        if node.op == "placeholder":
            # Stage 0 keeps the model's parameter names; received values get identifiers,
            # made unique: "attn.qkv" (inlined) and "attn_qkv" (a root node) are both "attn_qkv".
            target = node.target if stage.index == 0 else _unique(_identifier(node.name), taken)
            taken.add(target)
            default = tuple(arg_to_fx(a, env) for a in node.args)
            env[node.name] = graph.placeholder(target, default_value=default[0] if default else _NO_DEFAULT)
        elif node.op == "output":
            graph.output(arg_to_fx(node.args[0] if node.args else None, env))
        else:
            fn: Any = (
                ModeCheck(model) if node.op == "call_function" and node.target == MODE_CHECK
                else admitted[node.target] if admitted is not None and node.op == "call_function"
                else call_target(node)
            )
            env[node.name] = graph.create_node(
                node.op,
                fn,
                tuple(arg_to_fx(a, env) for a in node.args),
                {k: arg_to_fx(v, env) for k, v in node.kwargs.items()},
                name=_identifier(node.name),
            )
    # fx's code reaches a module as `self.a.b.c...`: compiling a chain as long as the module tree
    # is deep recurses as deep (`run_deep` makes room when it is).
    levels = max((n.target.count(".") + 1 for n in stage.graph.nodes if n.op in ("call_module", "get_attr")), default=0)
    return run_deep(
        levels,
        lambda: fx.GraphModule(model, graph, class_name=f"Stage{stage.index}"),
        what=f"Python compiling the code of stage {stage.index}",
    )


def run_stages(modules: list[fx.GraphModule] | list[nn.Module], *args: Any, **kwargs: Any) -> Any:
    """Run the stages one after another in this process: the reference for every engine."""
    values = modules[0](*args, **kwargs)
    for module in modules[1:]:
        values = module(*values)
    return values


def _in_call_order(nodes: tuple[Node, ...], model: nn.Module) -> tuple[Node, ...]:
    """Stage 0's placeholders in the order of the model's forward signature.

    fx lists keyword-only parameters before `*args` (its code object's order), which would
    turn `forward(x, *rest, scale=1.0)` into `forward(x, scale=1.0, *rest)`.
    """
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not any(n.target.startswith("*") and not n.target.startswith("**") for n in placeholders):
        return nodes
    try:
        order = {name: i for i, name in enumerate(inspect.signature(model.forward).parameters)}
    except (TypeError, ValueError):
        return nodes
    if not all(n.target.lstrip("*") in order for n in placeholders):
        return nodes
    placeholders.sort(key=lambda n: order[n.target.lstrip("*")])
    return (*placeholders, *(n for n in nodes if n.op != "placeholder"))


def _identifier(name: str) -> str:
    return _NOT_IDENTIFIER.sub("_", name)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate
