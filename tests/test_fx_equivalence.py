"""Staged runs equal the model, forward and backward, bit for bit, for random cut sets.

For every example model, hypothesis draws sets of valid cut points (modules called exactly
once, either side). A draw that leaves a stage empty is skipped; any other planning error is
a failure. The stage modules must share the model's parameters, take `stage.inputs`
positionally, and return `stage.outputs` as a tuple.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import core
from core import Cut, EmptyStage, Plan
from tests.test_fx_support import (
    NAMES,
    check_staged_run,
    cut_points,
    cut_sets,
    example,
    one_thread,  # noqa: F401  (an autouse fixture: one intra-op thread here)
    stage_values,
    traced,
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def _plan_or_skip(name: str, cuts: list[Cut]) -> Plan:
    try:
        return core.plan(traced(name), cuts)
    except EmptyStage:
        assume(False)
        raise  # unreachable: assume(False) raises


def _check_shapes_and_sharing(plan: Plan, modules: list[Any], name: str) -> None:
    ex = example(name)
    model = ex.model
    model_params = dict(model.named_parameters(remove_duplicate=False))
    model_buffers = dict(model.named_buffers(remove_duplicate=False))
    last = len(plan.stages) - 1
    for stage, module in zip(plan.stages, modules):
        # Shares parameters and buffers: the very same objects, under the same names.
        held = dict(module.named_parameters(remove_duplicate=False))
        assert set(held) == set(stage.params), stage.index
        for pname, param in held.items():
            assert param is model_params[pname], pname
            assert param is model.get_parameter(pname)
        for bname, buf in module.named_buffers(remove_duplicate=False):
            assert buf is model_buffers[bname], bname
        # Signature: the model's own for stage 0, else exactly the received names, in order.
        params = list(inspect.signature(module.forward).parameters.values())
        if stage.index == 0:
            expected = list(inspect.signature(model.forward).parameters)
            assert [p.name for p in params] == expected
        else:
            assert len(params) == len(stage.inputs)
            assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
            assert all(p.default is inspect.Parameter.empty for p in params)
        # Received values never include a whole tuple or dict: only the items read cross.
        for node in stage.graph.placeholders:
            if stage.index > 0:
                assert node.info is not None and node.info.kind not in ("tuple", "list", "dict"), node
    values = stage_values(modules, ex)
    for stage, value in zip(plan.stages[:last], values):
        assert type(value) is tuple and len(value) == len(stage.outputs), stage.index


@pytest.mark.parametrize("name", NAMES)
def test_no_cuts_is_one_stage_equal_to_the_model(name: str) -> None:
    plan = core.plan(traced(name), [])
    assert len(plan.stages) == 1
    modules = check_staged_run(plan, example(name))
    _check_shapes_and_sharing(plan, modules, name)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_random_cuts_run_equal_to_the_model(name: str, data: st.DataObject) -> None:
    cuts = data.draw(cut_sets(cut_points(traced(name))), label="cuts")
    plan = _plan_or_skip(name, cuts)
    assert len(plan.stages) == len(cuts) + 1
    modules = check_staged_run(plan, example(name))
    _check_shapes_and_sharing(plan, modules, name)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_stage_inputs_match_what_the_previous_stage_sends(name: str, data: st.DataObject) -> None:
    cuts = data.draw(cut_sets(cut_points(traced(name)), max_cuts=3), label="cuts")
    plan = _plan_or_skip(name, cuts)
    for before, after in zip(plan.stages, plan.stages[1:]):
        assert before.outputs == after.inputs
        assert [n.name for n in after.graph.placeholders] == list(after.inputs)
    assert plan.liveness == tuple(s.inputs for s in plan.stages)
    root = traced(name).root.graph
    assert root is not None
    assert plan.stages[0].inputs == tuple(n.name for n in root.placeholders)


def test_every_example_has_enough_cut_points() -> None:
    for name in NAMES:
        assert len(cut_points(traced(name))) >= 5, name
