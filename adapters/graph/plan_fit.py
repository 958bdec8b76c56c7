"""Does a plan fit this model? Checked before stages are built from it.

A plan made in this process from the model fits by construction. A plan read from a file may
have been made for another model, or another size of it: a parameter, buffer or submodule it
reads that the model lacks, or has with another shape, would otherwise surface as an fx
AttributeError or a shape error deep inside a training step, on some rank.
"""

from __future__ import annotations

from torch import Tensor, nn

from core import Node, Plan, PlanError

_HOW = (
    "was the plan made for another model, or another size of it? Plan again from this model "
    "(stagecut plan --model ... --json FILE) and train with that file"
)


class PlanDoesNotFit(PlanError):
    """A plan reads an attribute (parameter, buffer, submodule) the model lacks, or has with
    another shape."""


def check_plan_fits(plan: Plan, model: nn.Module) -> None:
    """`PlanDoesNotFit` naming the first stage node whose `get_attr`/`call_module` target the
    model lacks, or whose recorded shape differs from the model's tensor; then a stage whose
    parameters the model lacks or holds in another number of elements (what a leaf module of
    another width shows)."""
    if plan.origin != "json":  # made in this process from the model: fits by construction
        return
    for stage in plan.stages:
        for node in stage.graph.nodes:
            if node.op in ("get_attr", "call_module"):
                _check_node(stage.index, node, model)
    params, buffers = _tensors(model)
    for stage in plan.stages:
        storages: dict[int, int] = {}  # tied names share one storage, counted once as the plan does
        for name in stage.params:
            if name in params:
                storages[id(params[name])] = params[name].numel()
            elif name not in buffers:
                raise PlanDoesNotFit(f"stage {stage.index} holds {name!r}, which the model does not have; {_HOW}.")
        held = sum(storages.values())
        if held != stage.figures.params:
            names = ", ".join(stage.params[:3]) + (", ..." if len(stage.params) > 3 else "")
            raise PlanDoesNotFit(
                f"stage {stage.index}'s parameters ({names}) hold {stage.figures.params} elements in the plan "
                f"but {held} in the model; {_HOW}."
            )


def _check_node(index: int, node: Node, model: nn.Module) -> None:
    where = f"stage {index}, node {node.name!r}"
    found = _attribute(model, node.target)
    if found is None:
        raise PlanDoesNotFit(f"{where} reads {node.target!r}, which the model does not have; {_HOW}.")
    if node.op == "call_module" and not isinstance(found, nn.Module):
        raise PlanDoesNotFit(f"{where} calls {node.target!r}, which is not a module of the model; {_HOW}.")
    shape = node.info.shape if node.info is not None else None
    if isinstance(found, Tensor) and shape is not None and tuple(found.shape) != shape:
        raise PlanDoesNotFit(
            f"{where} reads {node.target!r} of shape {list(shape)}, but the model's is {list(found.shape)}; {_HOW}."
        )


def _tensors(model: nn.Module) -> tuple[dict[str, Tensor], set[str]]:
    """Every parameter by qualified name and the buffers' names, under every path a module is
    reachable by (as `named_parameters(remove_duplicate=False)`), walking the module tree
    without recursion (torch's walk recurses once per level)."""
    params: dict[str, Tensor] = {}
    buffers: set[str] = set()
    first: dict[int, str] = {}  # module -> the prefix it was walked under
    aliases: list[tuple[str, str]] = []  # (walked prefix, another prefix of the same module)
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in first:  # shared (or a cycle): walked once, named under each path below
            aliases.append((first[id(module)], prefix))
            continue
        first[id(module)] = prefix
        params.update((prefix + name, p) for name, p in module._parameters.items() if p is not None)
        buffers.update(prefix + name for name, b in module._buffers.items() if b is not None)
        stack.extend((f"{prefix}{name}.", child) for name, child in module._modules.items() if child is not None)
    for walked, alias in aliases:
        params.update((alias + n[len(walked):], p) for n, p in list(params.items()) if n.startswith(walked))
        buffers.update([alias + n[len(walked):] for n in buffers if n.startswith(walked)])
    return params, buffers


def _attribute(model: nn.Module, target: str) -> object | None:
    """The model's attribute at a dotted path, or None; looked up in modules' own tables only
    (parameters, buffers, submodules, plain attributes), never through properties."""
    current: object = model
    for part in target.split("."):
        if not isinstance(current, nn.Module):
            return None
        table = vars(current)
        for name in ("_parameters", "_buffers", "_modules"):
            if part in table.get(name, {}):
                current = table[name][part]
                break
        else:
            if part not in table:
                return None
            current = table[part]
        if current is None:
            return None
    return current
