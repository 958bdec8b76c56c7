"""Does a plan fit this model? Checked before stages are built from it.

A plan made in this process from the model fits by construction. A plan read from a file may
have been made for another model, or another size of it: a parameter, buffer or submodule it
reads that the model lacks, or has with another shape, would otherwise surface as an fx
AttributeError or a shape error deep inside a training step, on some rank.
"""

from __future__ import annotations

from torch import Tensor, nn

from adapters.graph.module_tree import named_tensors
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
    params = dict(named_tensors(model, "_parameters"))
    buffers = {name for name, _ in named_tensors(model, "_buffers")}
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
