"""Plans of the example models: ties, the seed's T5 stages, Slapo's shapes, tuples, scalars."""

from __future__ import annotations

import functools
import operator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import core
from adapters.examples import T5
from adapters.fx import run_stages, snapshot, stage_modules
from core import Cut, CutAtRoot, CutInsideLeaf, EmptyStage, Plan, Ref, UnknownPath
from tests.test_fx_support import (
    assert_same_tree,
    check_staged_run,
    cut_points,
    cut_sets,
    example,
    one_thread,  # noqa: F401  (an autouse fixture: one intra-op thread here)
    stage_values,
    traced,
)

# -- ties -----------------------------------------------------------------------------------


def seed_tie_groups(top: nn.Module, partitioned: bool) -> set[frozenset[tuple[str, int]]]:
    """Slapo's `analyze_tie_weights`, restated: partitioned, `top`'s children are the stages."""
    seen: dict[str, tuple[int, nn.Parameter]] = {}
    groups: dict[int, set[tuple[str, int]]] = {}

    def visit(stage: int, prefix: str, module: nn.Module) -> None:
        for local, param in module.named_parameters():
            name = f"{prefix}.{local}" if prefix else local
            if name in seen:
                continue
            for other, (other_stage, other_param) in seen.items():
                if partitioned and other_stage == stage:
                    continue
                if other_param is param:
                    groups.setdefault(id(param), {(other, other_stage)}).add((name, stage))
            seen[name] = (stage, param)
        for child_name, child in module.named_children():
            visit(stage, f"{prefix}.{child_name}" if prefix else child_name, child)

    if partitioned:
        for stage, (name, child) in enumerate(top.named_children()):
            visit(stage, name, child)
        return {
            frozenset((n.partition(".")[2], s) for n, s in group) for group in groups.values()
        }
    visit(0, "", top)
    return {frozenset(group) for group in groups.values()}


def _as_sets(plan: Plan) -> set[frozenset[tuple[str, int]]]:
    return {frozenset(group) for group in plan.ties}


def _pipeline(modules: list[Any]) -> nn.Module:
    top = nn.Module()
    for i, module in enumerate(modules):
        top.add_module(f"stage{i}", module)
    return top


def test_gpt_unpartitioned_ties_embedding_and_head_at_stage_zero() -> None:
    plan = core.plan(traced("gpt"), [])
    assert _as_sets(plan) == {frozenset({("tok_emb.weight", 0), ("lm_head.weight", 0)})}
    assert _as_sets(plan) == seed_tie_groups(example("gpt").model, partitioned=False)


@pytest.mark.parametrize(
    "cuts", [["blocks.1"], ["blocks.0", "blocks.2.attn"], ["tok_emb"], [Cut("lm_head", "before")]]
)
def test_gpt_embedding_and_head_in_different_stages_make_one_tie(cuts: list[Any]) -> None:
    plan = core.plan(traced("gpt"), cuts)
    last = len(plan.stages) - 1
    assert plan.ties == ((("tok_emb.weight", 0), ("lm_head.weight", last)),)
    assert "tok_emb.weight" in plan.stages[0].params
    assert "lm_head.weight" in plan.stages[last].params
    modules = stage_modules(plan, example("gpt").model)
    assert _as_sets(plan) == seed_tie_groups(_pipeline(modules), partitioned=True)
    assert modules[0].get_parameter("tok_emb.weight") is modules[last].get_parameter("lm_head.weight")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_ties_agree_with_the_seed_for_random_cuts(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["gpt", "t5"]), label="model")
    cuts = data.draw(cut_sets(cut_points(traced(name)), max_cuts=3), label="cuts")
    try:
        plan = core.plan(traced(name), cuts)
    except EmptyStage:
        assume(False)
        raise
    modules = stage_modules(plan, example(name).model)
    partitioned = len(plan.stages) > 1
    top = _pipeline(modules) if partitioned else example(name).model
    assert _as_sets(plan) == seed_tie_groups(top, partitioned)


# -- the seed's T5 examples -----------------------------------------------------------------


@functools.cache
def _t5_24() -> tuple[Any, core.Snapshot]:
    """The seed's T5 shape: 24 encoder and 24 decoder blocks (tiny widths), fully traced.

    Without example inputs (no value info): fake-tensor propagation through 48 blocks would
    cost seconds, and the stages do not depend on it.
    """
    ex = example("t5", n_layers=24, d_model=8, n_heads=2)
    return ex, snapshot(ex.model)


def _blocks(stack: str, lo: int, hi: int) -> list[str]:
    return [f"{stack}.block.{i}" for i in range(lo, hi + 1)]


def _encoder_output(plan: Plan) -> str:
    """The name of the encoder's result in the flat graph (its final layer norm)."""
    (name,) = [
        n.name
        for s in plan.stages
        for n in s.graph.nodes
        if n.op == "call_module" and n.target == "encoder.final_layer_norm"
    ]
    return name


def _real_encoder_output(ex: Any) -> torch.Tensor:
    model = ex.model
    assert isinstance(model, T5)
    with torch.no_grad():
        out: torch.Tensor = model.encoder(model.shared(ex.args[0]))
    return out


def test_t5_seed_example_two_cuts_give_three_stages() -> None:
    ex, snap = _t5_24()
    plan = core.plan(snap, ["encoder.block.11", "decoder.block.11"])
    assert len(plan.stages) == 3
    mods = [s.modules for s in plan.stages]
    assert mods[0] == ("shared", *_blocks("encoder", 0, 11))
    assert mods[1] == (
        *_blocks("encoder", 12, 23), "encoder.final_layer_norm", "shared", *_blocks("decoder", 0, 11)
    )
    assert mods[2] == (*_blocks("decoder", 12, 23), "decoder.final_layer_norm", "lm_head")

    enc = _encoder_output(plan)
    assert enc in plan.stages[1].outputs and enc in plan.stages[2].inputs
    assert enc not in plan.stages[1].inputs
    # Every decoder block of the last stage reads the received encoder output.
    readers = [
        n.target
        for n in plan.stages[2].graph.nodes
        if n.op == "call_module" and Ref(enc) in n.args
    ]
    assert readers == _blocks("decoder", 12, 23)

    modules = check_staged_run(plan, ex)
    sent = stage_values(modules, ex)[1]
    assert torch.equal(sent[plan.stages[1].outputs.index(enc)], _real_encoder_output(ex))


def test_t5_seed_example_with_a_cut_at_the_encoder_gives_four_stages() -> None:
    ex, snap = _t5_24()
    plan = core.plan(snap, ["encoder.block.11", "encoder", "decoder.block.11"])
    assert len(plan.stages) == 4
    mods = [s.modules for s in plan.stages]
    assert mods[0] == ("shared", *_blocks("encoder", 0, 11))
    assert mods[1] == (*_blocks("encoder", 12, 23), "encoder.final_layer_norm")
    assert mods[2] == ("shared", *_blocks("decoder", 0, 11))
    assert mods[3] == (*_blocks("decoder", 12, 23), "decoder.final_layer_norm", "lm_head")

    enc = _encoder_output(plan)
    assert [enc in s.inputs for s in plan.stages] == [False, False, True, True]
    assert plan.ties == ((("shared.weight", 0), ("shared.weight", 2)),)

    modules = check_staged_run(plan, ex)
    values = stage_values(modules, ex)
    real = _real_encoder_output(ex)
    for s in (1, 2):
        assert torch.equal(values[s][plan.stages[s].outputs.index(enc)], real)


# -- Slapo's partition-test shapes ----------------------------------------------------------


@pytest.mark.parametrize("name", ["slapo_seq", "slapo_list"])
def test_slapo_cut_after_first_layer(name: str) -> None:
    plan = core.plan(traced(name), ["layers.0"])
    assert [s.modules for s in plan.stages] == [("pre", "layers.0"), ("layers.1", "post")]
    check_staged_run(plan, example(name))


@pytest.mark.parametrize("name", ["slapo_seq", "slapo_list"])
def test_slapo_untraceable_pre_is_a_leaf_that_says_why(name: str) -> None:
    snap = traced(name)
    pre = snap.modules["pre"]
    assert pre.graph is None
    assert pre.leaf_reason is not None
    assert "fx could not trace" in pre.leaf_reason and "TraceError" in pre.leaf_reason
    with pytest.raises(CutInsideLeaf) as info:
        core.plan(snap, ["pre.linear"])
    assert pre.leaf_reason in str(info.value)
    assert info.value.leaf == "pre"


@pytest.mark.parametrize("name", ["slapo_seq", "slapo_list"])
def test_slapo_bad_paths(name: str) -> None:
    snap = traced(name)
    with pytest.raises(UnknownPath) as info:
        core.plan(snap, ["layer.0"])
    assert "layers.0" in info.value.suggestions
    assert "layers.0" in str(info.value)
    with pytest.raises(CutAtRoot):
        core.plan(snap, [""])
    with pytest.raises(CutAtRoot):
        core.plan(snap, [Cut("", "before")])


# -- structured outputs: only the items read cross -----------------------------------------


def _node(plan: Plan, target: str) -> str:
    (name,) = [n.name for s in plan.stages for n in s.graph.nodes if n.target == target and n.op == "call_module"]
    return name


def _items_read(snap: core.Snapshot, producer: str) -> list[str]:
    root = snap.root.graph
    assert root is not None
    return [
        n.name
        for n in root.nodes
        if n.op == "call_function" and n.target == "_operator.getitem" and n.args[0] == Ref(producer)
    ]


@pytest.mark.parametrize(
    "cuts, producer",
    [
        (["blocks.0"], "blocks.0"),  # tuple
        ([Cut("blocks.1", "before")], "blocks.0"),
        (["blocks.1"], "blocks.1"),  # dict
        (["blocks.0", "blocks.1", "blocks.2"], "blocks.1"),
        ([Cut("blocks.2", "before"), "blocks.3"], "blocks.1"),
    ],
)
def test_structured_only_items_cross_a_boundary(cuts: list[Any], producer: str) -> None:
    snap, ex = traced("structured"), example("structured")
    plan = core.plan(snap, cuts)
    tuple_node = _node(plan, producer)
    items = _items_read(snap, tuple_node)
    assert len(items) == 2
    assert all(tuple_node not in s.inputs and tuple_node not in s.outputs for s in plan.stages)
    home = next(s.index for s in plan.stages if any(n.name == tuple_node for n in s.graph.nodes))
    for item in items:  # read where the tuple is made, then sent on as items
        assert any(n.name == item for n in plan.stages[home].graph.nodes if n.op != "placeholder")
        assert item in plan.stages[home + 1].inputs
    check_staged_run(plan, ex)
    # The example passes context=None: the snapshot is specialised to it (checked in stage 0),
    # so it never crosses a boundary.
    assert all("context" not in s.outputs for s in plan.stages)
    guards = [n for n in plan.stages[0].graph.nodes if n.target.endswith("_assert_is_none")]
    assert any(n.args[0] == core.Ref("context") for n in guards)


def test_structured_inlined_tuple_block_has_no_tuple_at_all() -> None:
    snap = traced("structured")
    plan = core.plan(snap, ["blocks.0.linear"])
    kinds = [n.info.kind for s in plan.stages for n in s.graph.nodes if n.info is not None and n.op != "output"]
    assert "tuple" not in kinds
    assert "dict" in kinds  # blocks.1 stays whole and returns its dict
    check_staged_run(plan, example("structured"))


def test_structured_kwargs_and_defaults_reach_the_stages() -> None:
    ex = example("structured")
    plan = core.plan(traced("structured"), ["blocks.0", "blocks.2"])
    modules = stage_modules(plan, ex.model)
    assert {"x", "context", "shift", "temperature"} <= set(plan.stages[0].inputs)
    assert {"shift", "temperature"} <= set(plan.stages[-1].inputs)
    assert "context" not in plan.stages[-1].inputs  # fixed to the example's None in stage 0
    x = ex.args[0]
    with torch.no_grad():
        assert_same_tree(run_stages(modules, x), ex.model(x))  # every default
        assert_same_tree(run_stages(modules, x, temperature=3.0), ex.model(x, temperature=3.0))
        assert_same_tree(
            run_stages(modules, x, None, shift=ex.kwargs["shift"]), ex.model(x, None, shift=ex.kwargs["shift"])
        )
        with pytest.raises(AssertionError, match="context has been specialized"):
            run_stages(modules, x, context="ctx")


# -- scalars: an int and a 0-d tensor cross -------------------------------------------------


def test_scalars_int_and_zero_dim_tensor_cross_a_boundary() -> None:
    snap, ex = traced("scalars"), example("scalars")
    plan = core.plan(snap, ["blocks.0", "blocks.2"])
    root = snap.root.graph
    assert root is not None
    width, norm = _items_read(snap, "blocks_0")[1:3]
    (batch,) = [n.name for n in root.nodes if n.op == "call_method" and n.target == "size"]
    assert root.node(width).info == core.ValueInfo("scalar", nbytes=8)
    norm_info = root.node(norm).info
    assert norm_info is not None and norm_info.kind == "tensor" and norm_info.shape == ()
    for s in (1, 2):
        assert {width, norm, batch} <= set(plan.stages[s].inputs)
    assert "blocks_0" not in plan.stages[1].inputs
    modules = check_staged_run(plan, ex)
    values = stage_values(modules, ex)
    for stage, sent in zip(plan.stages[:-1], values[:-1]):
        w = sent[stage.outputs.index(width)]
        n = sent[stage.outputs.index(norm)]
        b = sent[stage.outputs.index(batch)]
        assert type(w) is int and w == 32
        assert type(b) is int and b == ex.args[0].size(0)
        assert isinstance(n, torch.Tensor) and n.dim() == 0


def test_scalars_getitem_is_a_projection_evaluated_by_its_producer() -> None:
    plan = core.plan(traced("scalars"), ["blocks.0"])
    stage0 = {n.name: n for n in plan.stages[0].graph.nodes}
    getitems = [n for n in stage0.values() if n.target == f"{operator.getitem.__module__}.getitem"]
    assert len(getitems) == 3
