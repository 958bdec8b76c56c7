"""A plan read back must fit the model its stages are built on (`PlanDoesNotFit`), checked
before any stage is built: the attributes it reads, their shapes, and each stage's parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters.fx import snapshot, stage_modules
from adapters.graph.plan_fit import PlanDoesNotFit
from core import Plan, PlanError, plan


class Scaled(nn.Module):
    """Reads its own parameter with get_attr (traced), and calls a leaf Linear."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x * self.scale)
        return out


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.a = Scaled(width)
        self.b = Scaled(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.b(self.a(x))
        return out


def _plan_json(width: int) -> str:
    model = Net(width)
    return plan(snapshot(model, torch.randn(2, width), cuts=["a.proj"]), ["a.proj"]).to_json()


def test_a_plan_fits_the_model_it_was_made_for() -> None:
    model = Net(4)
    modules = stage_modules(Plan.from_json(_plan_json(4)), model)
    x = torch.randn(2, 4)
    assert torch.equal(modules[1](*modules[0](x)), model(x))


def test_another_width_is_refused_naming_the_attribute_and_both_shapes() -> None:
    with pytest.raises(PlanDoesNotFit, match=r"reads 'a.scale' of shape \[4\], but the model's is \[8\]") as info:
        stage_modules(Plan.from_json(_plan_json(4)), Net(8))
    assert isinstance(info.value, PlanError) and "Plan again from this model" in str(info.value)


def test_a_missing_module_is_refused() -> None:
    model = Net(4)
    del model.b
    with pytest.raises(PlanDoesNotFit, match="node 'b' reads 'b', which the model does not have"):
        stage_modules(Plan.from_json(_plan_json(4)), model)


def test_a_leaf_of_another_width_is_refused_by_its_parameter_count() -> None:
    model = Net(4)
    model.a.proj = nn.Linear(4, 8)
    with pytest.raises(PlanDoesNotFit, match=r"stage 0's parameters \(a.proj.bias, a.proj.weight, a.scale\) hold 24 elements in the plan but 44"):
        stage_modules(Plan.from_json(_plan_json(4)), model)


def test_a_parameter_the_model_lacks_is_refused() -> None:
    model = Net(4)
    model.a.proj = nn.Linear(4, 4, bias=False)
    with pytest.raises(PlanDoesNotFit, match="stage 0 holds 'a.proj.bias', which the model does not have"):
        stage_modules(Plan.from_json(_plan_json(4)), model)
