"""Plan -> one fx GraphModule per stage, sharing parameters and buffers with the model."""

from __future__ import annotations

import inspect
import re
from typing import Any

from torch import fx, nn

from adapters.fx.convert import arg_to_fx, call_target
from core import Plan, Stage

_NOT_IDENTIFIER = re.compile(r"\W")
_NO_DEFAULT: Any = inspect.Signature.empty  # fx's marker for a parameter without default


def stage_modules(plan: Plan, model: nn.Module) -> list[fx.GraphModule]:
    """The stages as modules: `forward(*stage.inputs)` returns `stage.outputs` as a tuple;
    the last stage returns what the model returns. Parameters are the model's own (no copies)."""
    return [stage_module(stage, model) for stage in plan.stages]


def stage_module(stage: Stage, model: nn.Module) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[str, Any] = {}
    for node in stage.graph.nodes:
        if node.op == "placeholder":
            # Stage 0 keeps the model's parameter names; received values get identifiers.
            target = node.target if stage.index == 0 else _identifier(node.name)
            default = tuple(arg_to_fx(a, env) for a in node.args)
            env[node.name] = graph.placeholder(target, default_value=default[0] if default else _NO_DEFAULT)
        elif node.op == "output":
            graph.output(arg_to_fx(node.args[0] if node.args else None, env))
        else:
            env[node.name] = graph.create_node(
                node.op,
                call_target(node),
                tuple(arg_to_fx(a, env) for a in node.args),
                {k: arg_to_fx(v, env) for k, v in node.kwargs.items()},
                name=_identifier(node.name),
            )
    return fx.GraphModule(model, graph, class_name=f"Stage{stage.index}")


def run_stages(modules: list[fx.GraphModule] | list[nn.Module], *args: Any, **kwargs: Any) -> Any:
    """Run the stages one after another in this process: the reference for every engine."""
    values = modules[0](*args, **kwargs)
    for module in modules[1:]:
        values = module(*values)
    return values


def _identifier(name: str) -> str:
    return _NOT_IDENTIFIER.sub("_", name)


