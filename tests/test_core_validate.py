"""Pass 1 on hand-built snapshots: `check_snapshot`, `check_cuts`, and the errors `plan` raises."""

from __future__ import annotations

from typing import Any, cast

import pytest

import core
from core import (
    CalledMoreThanOnce,
    Cut,
    CutAtRoot,
    CutError,
    CutInsideLeaf,
    DuplicateCut,
    EmptyStage,
    MalformedSnapshot,
    NotCalled,
    PlanError,
    Snapshot,
    UnknownPath,
    UnsupportedGraph,
)
from core.builder import GraphBuilder, module
from core.graph import Graph, Node, Ref
from core.snapshot import Module
from core.validate import check_cuts, check_snapshot

LEAF_REASON = "data-dependent control flow in forward"


def _seq(container: bool = False) -> Snapshot:
    """Slapo's partition-test shape: pre (leaf) -> layers (two blocks) -> post.

    `container=False`: `layers` is a traced Sequential whose graph calls "0" and "1".
    `container=True`: `layers` is a ModuleList (no graph); the root calls "layers.0", "layers.1".
    """
    blocks = {"0": module("layers.0", type_name="Linear"), "1": module("layers.1", type_name="Linear")}
    g = GraphBuilder()
    x = g.placeholder("x")
    h = g.call_module("pre", x)
    if container:
        h = g.call_module("layers.1", g.call_module("layers.0", h))
        layers = module("layers", None, blocks, type_name="ModuleList")
    else:
        h = g.call_module("layers", h)
        lg = GraphBuilder()
        y = lg.placeholder("input")
        layers = module("layers", lg.output(lg.call_module("1", lg.call_module("0", y))), blocks)
    root = module(
        "",
        g.output(g.call_module("post", h)),
        {
            "pre": module("pre", children={"lin": module("pre.lin")}, leaf_reason=LEAF_REASON),
            "layers": layers,
            "post": module("post"),
        },
    )
    return Snapshot(root)


def _graph(*nodes: Node) -> Graph:
    return Graph(tuple(nodes))


def _root(graph: Graph, **children: Module) -> Snapshot:
    return Snapshot(module("", graph, {name: module(name) for name in children} | children))


def _ph(name: str) -> Node:
    return Node(name, "placeholder", name)


def _out(*names: str) -> Node:
    return Node("output", "output", "output", (tuple(Ref(n) for n in names),))


def _call(name: str, target: str, *inputs: str, op: str = "call_function") -> Node:
    return Node(name, cast(Any, op), target, tuple(Ref(i) for i in inputs))


# -- check_snapshot ----------------------------------------------------------------------------


def _malformed(snapshot: Snapshot) -> str:
    with pytest.raises(MalformedSnapshot) as info:
        check_snapshot(snapshot)
    with pytest.raises(MalformedSnapshot) as again:  # plan checks the snapshot first
        core.plan(snapshot, [])
    assert str(again.value) == str(info.value)
    return str(info.value)


def test_well_formed_snapshots_pass() -> None:
    check_snapshot(_seq())
    check_snapshot(_seq(container=True))


def test_dangling_reference() -> None:
    s = _root(_graph(_ph("x"), _call("y", "torch.relu", "nope"), _out("y")))
    msg = _malformed(s)
    assert "'y'" in msg and "'nope'" in msg and "dangling" in msg


def test_used_before_defined() -> None:
    s = _root(_graph(_ph("x"), _call("a", "torch.relu", "b"), _call("b", "torch.relu", "x"), _out("a")))
    msg = _malformed(s)
    assert "'a'" in msg and "'b'" in msg and "before it is defined" in msg


def test_cycle() -> None:
    s = _root(_graph(_ph("x"), _call("a", "torch.add", "x", "b"), _call("b", "torch.relu", "a"), _out("b")))
    assert "cycle" in _malformed(s)


def test_self_reference() -> None:
    s = _root(_graph(_ph("x"), _call("a", "torch.add", "x", "a"), _out("a")))
    assert "'a'" in _malformed(s)


def test_duplicate_names() -> None:
    s = _root(_graph(_ph("x"), _call("a", "torch.relu", "x"), _call("a", "torch.neg", "x"), _out("a")))
    msg = _malformed(s)
    assert "'a'" in msg and "unique" in msg


def test_bad_op() -> None:
    s = _root(_graph(_ph("x"), _call("a", "torch.relu", "x", op="call_magic"), _out("a")))
    msg = _malformed(s)
    assert "'a'" in msg and "call_magic" in msg


@pytest.mark.parametrize(
    "nodes",
    [
        (_ph("x"), _out("x"), _call("a", "torch.relu", "x")),  # output not last
        (_ph("x"), _call("a", "torch.relu", "x")),  # no output at all
        (),  # empty graph
    ],
)
def test_output_must_be_last(nodes: tuple[Node, ...]) -> None:
    assert "output" in _malformed(_root(_graph(*nodes)))


def test_two_outputs() -> None:
    s = _root(_graph(_ph("x"), Node("o1", "output", "output", (Ref("x"),)), _out("x")))
    assert "'o1'" in _malformed(s)


def test_call_module_target_missing_from_tree() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    inner = GraphBuilder()
    y = inner.placeholder("y")
    inner_graph = inner.output(inner.call_module("ghost", y))  # no child "ghost" under "blk"
    root = module("", g.output(g.call_module("blk", x)), {"blk": module("blk", inner_graph)})
    msg = _malformed(Snapshot(root))
    assert "'blk'" in msg and "'ghost'" in msg and "module tree" in msg


def test_nested_graphs_are_checked_too() -> None:
    inner = _graph(_ph("y"), _call("z", "torch.relu", "missing"), _out("z"))
    g = GraphBuilder()
    root = module("", g.output(g.call_module("blk", g.placeholder("x"))), {"blk": module("blk", inner)})
    msg = _malformed(Snapshot(root))
    assert "'blk'" in msg and "'z'" in msg


def test_untraced_root_is_a_plan_error() -> None:
    with pytest.raises(PlanError) as info:
        core.plan(Snapshot(module("", None, leaf_reason="not traceable")), [])
    assert "not traceable" in str(info.value)


# -- check_cuts --------------------------------------------------------------------------------


def _cut_error(snapshot: Snapshot, cuts: list[Any], kind: type[CutError]) -> CutError:
    """`plan` raises exactly `kind`; so does `check_cuts`, except for EmptyStage, which needs
    the flat graph and is found by stage assignment."""
    if kind is not EmptyStage:
        with pytest.raises(kind) as first:
            check_cuts(snapshot, cuts)
        assert type(first.value) is kind
    with pytest.raises(kind) as info:
        core.plan(snapshot, cuts)
    assert type(info.value) is kind
    return info.value


def test_valid_cuts_give_the_spine() -> None:
    spine = check_cuts(_seq(), ["layers.0", Cut("post", "before")])
    assert spine.cuts == (Cut("layers.0", "after"), Cut("post", "before"))
    assert spine.inline == frozenset({"layers"})  # the traced Sequential, not the root
    spine = check_cuts(_seq(container=True), ["layers.0"])
    assert spine.inline == frozenset()  # the root calls layers.0 itself


def test_unknown_path_suggests_the_nearest() -> None:
    err = _cut_error(_seq(), ["layer.0"], UnknownPath)
    assert "'layer.0'" in str(err) and "'layers.0'" in str(err)
    assert "layers.0" in cast(UnknownPath, err).suggestions


def test_unknown_path_without_suggestion() -> None:
    err = _cut_error(_seq(), ["zzzzzzzzzz"], UnknownPath)
    assert "Did you mean" not in str(err)


@pytest.mark.parametrize("cut", ["", Cut(""), "before:", "after:"])
def test_cut_at_root(cut: Any) -> None:
    _cut_error(_seq(), [cut], CutAtRoot)


def test_cut_inside_leaf_names_the_reason() -> None:
    err = _cut_error(_seq(), ["pre.lin"], CutInsideLeaf)
    assert LEAF_REASON in str(err) and "'pre'" in str(err) and "'pre.lin'" in str(err)


def test_cut_inside_leaf_under_a_container() -> None:
    blocks = module("enc.blocks", children={"0": module("enc.blocks.0")}, type_name="ModuleList")
    leaf = module("enc", children={"blocks": blocks}, leaf_reason="uses torch.jit")
    g = GraphBuilder()
    h = g.call_module("enc", g.placeholder("x"))
    snap = Snapshot(module("", g.output(g.call_module("post", h)), {"enc": leaf, "post": module("post")}))
    err = _cut_error(snap, ["enc.blocks.0"], CutInsideLeaf)
    assert "uses torch.jit" in str(err) and "'enc'" in str(err)


def test_cut_inside_leaf_blames_the_module_where_tracing_stopped() -> None:
    """`enc` failed to trace; `enc.mid` below it has a generic reason: the error names `enc`."""
    mid = module("enc.mid", children={"a": module("enc.mid.a")}, leaf_reason="never called by a traced module")
    leaf = module("enc", children={"mid": mid}, leaf_reason="fx could not trace it: TraceError")
    g = GraphBuilder()
    snap = Snapshot(module("", g.output(g.call_module("enc", g.placeholder("x"))), {"enc": leaf}))
    err = _cut_error(snap, ["enc.mid.a"], CutInsideLeaf)
    assert "'enc'" in str(err) and "TraceError" in str(err) and "'enc.mid'" not in str(err)


def test_not_called_container() -> None:
    err = _cut_error(_seq(container=True), ["layers"], NotCalled)
    assert "'layers'" in str(err) and "layers.0" in str(err)


def test_not_called_on_the_way_to_the_root_names_the_cut() -> None:
    """`enc` is traced but nobody calls it: a cut at enc.block cannot reach the root."""
    bg = GraphBuilder()
    enc = module("enc", bg.output(bg.call_module("block", bg.placeholder("h"))), {"block": module("enc.block")})
    g = GraphBuilder()
    s = Snapshot(module("", g.output(g.call_module("post", g.placeholder("x"))), {"enc": enc, "post": module("post")}))
    err = _cut_error(s, ["enc.block"], NotCalled)
    assert str(err).startswith("cut 'enc.block'") and "'enc'" in str(err)
    assert cast(NotCalled, err).path == "enc.block"


def test_cut_module_called_twice() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    h = g.call_module("act", g.call_module("lin", g.call_module("act", x)))
    s = Snapshot(module("", g.output(h), {"act": module("act"), "lin": module("lin")}))
    err = _cut_error(s, ["act"], CalledMoreThanOnce)
    assert "'act'" in str(err) and "2 times" in str(err)
    assert core.plan(s, ["lin"]).stages[0].modules == ("act", "lin")  # the others are fine


def test_spine_module_called_twice() -> None:
    bg = GraphBuilder()
    enc_graph = bg.output(bg.call_module("block.1", bg.call_module("block.0", bg.placeholder("h"))))
    blocks = module("enc.block", None, {"0": module("enc.block.0"), "1": module("enc.block.1")})
    g = GraphBuilder()
    h = g.call_module("enc", g.call_module("enc", g.placeholder("x")))
    s = Snapshot(module("", g.output(h), {"enc": module("enc", enc_graph, {"block": blocks})}))
    err = _cut_error(s, ["enc.block.0"], CalledMoreThanOnce)
    assert "'enc.block.0'" in str(err) and "'enc'" in str(err)


def test_duplicate_cut() -> None:
    err = _cut_error(_seq(), ["layers.0", "after:layers.0"], DuplicateCut)
    assert "layers.0" in str(err)
    _cut_error(_seq(), [Cut("post", "before"), "before:post"], DuplicateCut)
    check_cuts(_seq(), ["before:layers.1", "after:layers.1"])  # two sides are two cuts


def test_empty_stage_between_coinciding_boundaries() -> None:
    err = _cut_error(_seq(), ["after:layers.0", "before:layers.1"], EmptyStage)
    assert cast(EmptyStage, err).stage == 1
    assert "layers.0" in str(err) and "layers.1" in str(err)


def test_empty_stage_after_the_last_call() -> None:
    err = _cut_error(_seq(), ["layers.0", "after:post"], EmptyStage)
    assert cast(EmptyStage, err).stage == 2 and "end of the model" in str(err)


def test_empty_stage_before_the_first_call() -> None:
    err = _cut_error(_seq(), ["before:pre"], EmptyStage)
    assert cast(EmptyStage, err).stage == 0 and "start of the model" in str(err)


def test_empty_stage_projections_are_not_work() -> None:
    g = GraphBuilder()
    t = g.call_module("lstm", g.placeholder("x"))
    item = g.getitem(t, 0)
    s = Snapshot(module("", g.output(g.getitem(item, 1)), {"lstm": module("lstm")}))
    _cut_error(s, ["lstm"], EmptyStage)  # only getitems after the cut


def test_no_cuts_is_one_stage_even_without_compute() -> None:
    g = GraphBuilder()
    s = Snapshot(module("", g.output(g.placeholder("x"))))
    result = core.plan(s, [])
    assert len(result.stages) == 1 and result.liveness == (("x",),)


def test_star_args_on_the_spine_is_unsupported() -> None:
    inner = GraphBuilder()
    a = inner.placeholder("*args")
    blk = module("blk", inner.output(inner.call_module("lin", a)), {"lin": module("blk.lin")})
    g = GraphBuilder()
    s = Snapshot(module("", g.output(g.call_module("blk", g.placeholder("x"))), {"blk": blk}))
    with pytest.raises(UnsupportedGraph) as info:
        core.plan(s, ["blk.lin"])
    assert "'blk'" in str(info.value) and "*args" in str(info.value)
    assert len(core.plan(s, []).stages) == 1  # only cutting inside it needs inlining


@pytest.mark.parametrize(
    "cuts",
    [
        ["layers.0", "layers.0"],
        ["nope"],
        ["layers.0.weight"],
        ["pre.lin", "layers.0"],
        ["middle:layers.0"],
        [":"],
        ["."],
        ["layers."],
        [".layers"],
        ["layers..0"],
        ["before:"],
        ["after:after:layers.0"],
    ],
)
def test_only_plan_errors_escape(cuts: list[str]) -> None:
    for snapshot in (_seq(), _seq(container=True)):
        with pytest.raises(PlanError) as info:
            core.plan(snapshot, cuts)
        assert type(info.value) is not PlanError  # a documented subclass


def test_strings_and_cut_objects_agree() -> None:
    a = core.plan(_seq(), ["layers.0", "before:post"])
    b = core.plan(_seq(), [Cut("layers.0"), Cut("post", "before")])
    c = core.plan(_seq(), ["after:layers.0", Cut("post", "before")])
    assert a == b == c
    assert [s.modules for s in a.stages] == [("pre", "layers.0"), ("layers.1",), ("post",)]


def test_error_hierarchy() -> None:
    for kind in (UnknownPath, CutAtRoot, CutInsideLeaf, NotCalled, CalledMoreThanOnce, DuplicateCut, EmptyStage):
        assert issubclass(kind, CutError) and issubclass(kind, PlanError)
    assert issubclass(MalformedSnapshot, PlanError) and issubclass(UnsupportedGraph, PlanError)


def test_a_module_whose_path_is_not_its_place_in_the_tree_is_malformed() -> None:
    g = GraphBuilder()
    root = module("", g.output(g.call_module("a", g.placeholder("x"))), {"a": module("b")})
    message = _malformed(Snapshot(root))
    assert "'b'" in message and "must be 'a'" in message


def test_a_cut_side_other_than_after_or_before_is_refused() -> None:
    with pytest.raises(CutError, match="'middle' is neither 'after' nor 'before'"):
        core.plan(_seq(), [core.Cut("layers.0", cast(Any, "middle"))])


def test_walk_and_json_order_children_naturally_whatever_the_hash_order() -> None:
    children = {str(i): module(f"l.{i}") for i in (10, 2, 1, 0)}
    tree = Snapshot(module("", None, {"l": module("l", None, children)}))
    assert [m.path for m in tree.root.walk()] == ["", "l", "l.0", "l.1", "l.2", "l.10"]
    assert tree.to_json().index('"l.2"') < tree.to_json().index('"l.10"')
