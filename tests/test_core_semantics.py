"""What the plan means, on hand-built snapshots: the seed's T5 and partition-test examples,
skip connections, tuple/dict returns and getitem after a cut, kwargs, ties, and the passes."""

from __future__ import annotations

import pytest

import core
from core import Cut, Plan, Snapshot
from core.assign import ANY_STAGE, assign_stages
from core.builder import GraphBuilder, module
from core.graph import DictOf, Graph, Node, Ref
from core.liveness import live_in
from core.propagate import Boundary, FlatGraph, propagate
from core.snapshot import Module, Param
from core.ties import tie_groups
from core.validate import check_cuts
from tests.reference import Evaluator, Term, node_reads, same

GETITEM = "_operator.getitem"


def _stage_of(result: Plan, op: str, target: str) -> int:
    """The one stage computing the node with this op and target (received copies excluded)."""
    found = [s.index for s in result.stages for n in s.graph.nodes if n.op == op and n.target == target]
    assert len(found) == 1, (op, target, found)
    return found[0]


def _name_of(result: Plan, op: str, target: str) -> str:
    return next(n.name for s in result.stages for n in s.graph.nodes if n.op == op and n.target == target)


def _receivers(result: Plan, name: str) -> list[int]:
    return [s.index for s in result.stages if name in s.inputs]


def _runs_like_the_model(snapshot: Snapshot, result: Plan, *args: object, **kwargs: object) -> None:
    ev = Evaluator(snapshot)
    inputs = tuple(Term("input", str(a), (), ()) for a in args)
    named = {k: Term("input", k, (), ()) for k in kwargs}
    assert same(ev.run_plan(result, inputs, named), ev.run_model(inputs, named))


# -- the seed's T5 examples --------------------------------------------------------------------


def _t5(blocks: int = 24) -> Snapshot:
    """root -> encoder (traced: block.0..N-1, final_layer_norm) -> decoder (traced; every block
    also reads the encoder output) -> lm_head."""

    def stack(path: str, cross: bool) -> Module:
        g = GraphBuilder()
        h = g.placeholder("hidden")
        enc = g.placeholder("encoder_hidden_states") if cross else None
        for i in range(blocks):
            h = g.call_module(f"block.{i}", h, enc) if enc is not None else g.call_module(f"block.{i}", h)
        h = g.call_module("final_layer_norm", h)
        items = {str(i): module(f"{path}.block.{i}", type_name="T5Block") for i in range(blocks)}
        children = {
            "block": module(f"{path}.block", None, items, type_name="ModuleList"),
            "final_layer_norm": module(f"{path}.final_layer_norm"),
        }
        return module(path, g.output(h), children, type_name="T5Stack")

    g = GraphBuilder()
    ids = g.placeholder("input_ids")
    dec_ids = g.placeholder("decoder_input_ids")
    enc = g.call_module("encoder", ids)
    dec = g.call_module("decoder", dec_ids, enc)
    root = module(
        "",
        g.output(g.call_module("lm_head", dec)),
        {"encoder": stack("encoder", False), "decoder": stack("decoder", True), "lm_head": module("lm_head")},
    )
    return Snapshot(root)


def _blocks(stack: str, first: int, last: int) -> list[str]:
    return [f"{stack}.block.{i}" for i in range(first, last + 1)]


def test_t5_two_cuts_three_stages() -> None:
    s = _t5()
    result = core.plan(s, ["encoder.block.11", "decoder.block.11"])
    assert [list(st.modules) for st in result.stages] == [
        _blocks("encoder", 0, 11),
        _blocks("encoder", 12, 23) + ["encoder.final_layer_norm"] + _blocks("decoder", 0, 11),
        _blocks("decoder", 12, 23) + ["decoder.final_layer_norm", "lm_head"],
    ]
    enc_out = _name_of(result, "call_module", "encoder.final_layer_norm")
    # made in stage 1, read by decoder blocks in stages 1 and 2: only stage 2 receives it
    assert _receivers(result, enc_out) == [2]
    # decoder_input_ids: a model input (stage 0 receives all of them) read by decoder.block.0
    # in stage 1, so passed on by stage 0 and received by stage 1, no further
    assert _receivers(result, "decoder_input_ids") == [0, 1]
    assert "decoder_input_ids" in result.stages[0].bypass
    assert result.liveness[0] == ("input_ids", "decoder_input_ids")
    _runs_like_the_model(s, result, "input_ids", "decoder_input_ids")


def test_t5_cut_at_encoder_too_four_stages() -> None:
    s = _t5()
    result = core.plan(s, ["encoder.block.11", "encoder", "decoder.block.11"])
    assert [list(st.modules) for st in result.stages] == [
        _blocks("encoder", 0, 11),
        _blocks("encoder", 12, 23) + ["encoder.final_layer_norm"],
        _blocks("decoder", 0, 11),
        _blocks("decoder", 12, 23) + ["decoder.final_layer_norm", "lm_head"],
    ]
    enc_out = _name_of(result, "call_module", "encoder.final_layer_norm")
    assert _receivers(result, enc_out) == [2, 3]  # every stage between its maker and last reader
    assert enc_out in result.stages[1].outputs and enc_out in result.stages[2].outputs
    assert enc_out not in result.stages[3].outputs
    # decoder_input_ids passes through stages 0 and 1 untouched: a bypass there
    assert _receivers(result, "decoder_input_ids") == [0, 1, 2]
    assert result.stages[0].bypass == ("decoder_input_ids",)
    assert result.stages[1].bypass == ("decoder_input_ids",)
    assert result.stages[2].bypass == ()  # it reads enc_out itself and also passes it on
    _runs_like_the_model(s, result, "input_ids", "decoder_input_ids")


def test_t5_cut_order_does_not_matter() -> None:
    s = _t5(4)
    a = core.plan(s, ["encoder.block.1", "encoder", "decoder.block.1"])
    b = core.plan(s, ["decoder.block.1", "encoder", "encoder.block.1"])
    assert [x.graph for x in a.stages] == [x.graph for x in b.stages]


def test_t5_only_a_cut_at_encoder() -> None:
    s = _t5(4)
    result = core.plan(s, ["encoder"])
    # the root calls `encoder` itself: nothing needs inlining, both stacks stay whole
    assert check_cuts(s, ["encoder"]).inline == frozenset()
    assert [st.modules for st in result.stages] == [("encoder",), ("decoder", "lm_head")]
    assert result.liveness == (("input_ids", "decoder_input_ids"), ("decoder_input_ids", "encoder"))
    _runs_like_the_model(s, result, "input_ids", "decoder_input_ids")


# -- Slapo's partition-test shapes -------------------------------------------------------------


def _seq(container: bool) -> Snapshot:
    blocks = {"0": module("layers.0"), "1": module("layers.1")}
    g = GraphBuilder()
    x = g.placeholder("x")
    h = g.call_module("pre", x)
    if container:
        h = g.call_module("layers.1", g.call_module("layers.0", h))
        layers = module("layers", None, blocks, type_name="ModuleList")
    else:
        h = g.call_module("layers", h)
        lg = GraphBuilder()
        layers = module("layers", lg.output(lg.call_module("1", lg.call_module("0", lg.placeholder("x")))), blocks)
    children = {"pre": module("pre", leaf_reason="untraceable"), "layers": layers, "post": module("post")}
    return Snapshot(module("", g.output(g.call_module("post", h)), children))


@pytest.mark.parametrize("container", [False, True], ids=["sequential", "modulelist"])
def test_partition_test_shape(container: bool) -> None:
    s = _seq(container)
    result = core.plan(s, ["layers.0"])
    assert [st.modules for st in result.stages] == [("pre", "layers.0"), ("layers.1", "post")]
    assert result.liveness[0] == ("x",)
    # exactly one value crosses: layers.0's output
    (crossing,) = result.liveness[1]
    assert _stage_of(result, "call_module", "layers.0") == 0
    assert result.stages[0].graph.node(crossing).target == "layers.0"
    _runs_like_the_model(s, result, "x")


def test_sequential_variant_renames_inlined_nodes_under_the_call() -> None:
    result = core.plan(_seq(False), ["layers.0"])
    # an inlined node is named `<call node>.<node>`: the root's call node is "layers", the
    # Sequential's nodes are "0" and "1"
    names = [n.name for st in result.stages for n in st.graph.nodes if n.op == "call_module"]
    assert names == ["pre", "layers.0", "layers.1", "post"]


# -- skip connections --------------------------------------------------------------------------


def _skips() -> Snapshot:
    """x -> a -> b -> c -> d(c, x, a): x and a skip over the stages of b and c."""
    g = GraphBuilder()
    x = g.placeholder("x")
    a = g.call_module("a", x)
    b = g.call_module("b", a)
    c = g.call_module("c", b)
    d = g.call_module("d", c, x, a)
    return Snapshot(module("", g.output(d), {n: module(n) for n in "abcd"}))


def test_skip_connections_cross_every_stage_in_between() -> None:
    s = _skips()
    result = core.plan(s, ["a", "b", "c"])
    assert [st.modules for st in result.stages] == [("a",), ("b",), ("c",), ("d",)]
    # definition order; a value is received from the stage after its maker to its last reader
    assert result.liveness == (("x",), ("x", "a"), ("x", "a", "b"), ("x", "a", "c"))
    assert [st.outputs for st in result.stages[:-1]] == [("x", "a"), ("x", "a", "b"), ("x", "a", "c")]
    assert result.stages[-1].outputs == ("d",)
    assert [st.bypass for st in result.stages] == [(), ("x",), ("x", "a"), ()]
    _runs_like_the_model(s, result, "x")


def test_no_value_is_received_that_no_later_stage_needs() -> None:
    result = core.plan(_skips(), ["b"])  # stage 0: a, b; stage 1: c, d
    assert result.liveness == (("x",), ("x", "a", "b"))
    result = core.plan(_skips(), ["a", "c"])  # b is made and used in stage 1 only
    assert result.liveness == (("x",), ("x", "a"), ("x", "a", "c"))


def test_unused_value_never_crosses() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    dead = g.call_function("torch.neg", x)
    a = g.call_module("a", x)
    b = g.call_module("b", a)
    s = Snapshot(module("", g.output(b), {"a": module("a"), "b": module("b")}))
    result = core.plan(s, ["a"])
    assert result.liveness == (("x",), ("a",))
    assert dead.name in result.stages[0].graph


# -- tuple and dict returns, getitem after a cut ----------------------------------------------


def _returns(kind: str, read: object, cut: str) -> tuple[Snapshot, Plan]:
    """`blk` (traced) makes p = blk.p(x), q = blk.q(x) and returns them as a tuple or a dict;
    the root reads one item after the cut and feeds it to `post`."""
    bg = GraphBuilder()
    x = bg.placeholder("x")
    p = bg.call_module("p", x)
    q = bg.call_module("q", x)
    ret = (p, q) if kind == "tuple" else DictOf((("p", p), ("q", q)))
    blk = module("blk", bg.output(ret), {"p": module("blk.p"), "q": module("blk.q")})
    g = GraphBuilder()
    t = g.call_module("blk", g.placeholder("x"))
    item = g.getitem(t, read)  # type: ignore[arg-type]
    s = Snapshot(module("", g.output(g.call_module("post", item)), {"blk": blk, "post": module("post")}))
    return s, core.plan(s, [cut])


@pytest.mark.parametrize("kind, read", [("tuple", 1), ("tuple", -1), ("dict", "q")])
def test_only_the_read_item_crosses(kind: str, read: object) -> None:
    s, result = _returns(kind, read, "blk.q")  # both items made in stage 0
    q = _name_of(result, "call_module", "blk.q")
    assert result.liveness[1] == (q,)  # the item, not the tuple, not p
    assert not any(n.target == GETITEM for st in result.stages for n in st.graph.nodes)  # folded
    _runs_like_the_model(s, result, "x")


@pytest.mark.parametrize("kind, read", [("tuple", 1), ("dict", "q")])
def test_unread_item_made_before_the_cut_does_not_cross(kind: str, read: object) -> None:
    s, result = _returns(kind, read, "blk.p")  # p in stage 0, q in stage 1
    assert [st.modules for st in result.stages] == [("blk.p",), ("blk.q", "post")]
    assert result.liveness[1] == ("x",)  # q needs x; p is never read
    _runs_like_the_model(s, result, "x")


@pytest.mark.parametrize("kind, read", [("tuple", 0), ("dict", "p")])
def test_read_item_made_before_the_cut_crosses_alone(kind: str, read: object) -> None:
    s, result = _returns(kind, read, "blk.p")
    p = _name_of(result, "call_module", "blk.p")
    assert result.liveness[1] == ("x", p)
    _runs_like_the_model(s, result, "x")


def test_nested_tuple_return_read_through_two_getitems() -> None:
    """`blk` returns ((p, q), r); the root reads t[0][1] (= q) after the cut: both getitems fold,
    so only q crosses, not p, r or any tuple."""
    bg = GraphBuilder()
    x = bg.placeholder("x")
    p, q, r = (bg.call_module(n, x) for n in ("p", "q", "r"))
    blk = module("blk", bg.output(((p, q), r)), {n: module(f"blk.{n}") for n in ("p", "q", "r")})
    g = GraphBuilder()
    t = g.call_module("blk", g.placeholder("x"))
    item = g.getitem(g.getitem(t, 0), -1)
    s = Snapshot(module("", g.output(g.call_module("post", item)), {"blk": blk, "post": module("post")}))
    result = core.plan(s, ["blk"])  # stays whole: its call node's tuple output is a leaf value
    assert result.liveness[1] == (item.name,)  # the getitems moved back: only the item crosses
    result = core.plan(s, ["blk.r"])  # inlined: the getitems fold away
    assert result.liveness[1] == (_name_of(result, "call_module", "blk.q"),)
    assert not any(n.target == GETITEM for st in result.stages for n in st.graph.nodes)
    _runs_like_the_model(s, result, "x")


def test_dict_literal_with_a_repeated_key_reads_the_last() -> None:
    """{"a": p, "a": q}["a"] is q in Python (the later entry wins); folding must agree."""
    bg = GraphBuilder()
    x = bg.placeholder("x")
    p, q = bg.call_module("p", x), bg.call_module("q", x)
    blk = module("blk", bg.output(DictOf((("a", p), ("a", q)))), {"p": module("blk.p"), "q": module("blk.q")})
    g = GraphBuilder()
    d = g.call_module("blk", g.placeholder("x"))
    y = g.call_module("post", g.getitem(d, "a"), g.call_method("get", d, "a"))
    s = Snapshot(module("", g.output(y), {"blk": blk, "post": module("post")}))
    result = core.plan(s, ["blk.q"])
    q_name = _name_of(result, "call_module", "blk.q")
    post = next(n for n in result.stages[1].graph.nodes if n.target == "post")
    assert post.args == (Ref(q_name), Ref(q_name)) and result.liveness[1] == (q_name,)
    _runs_like_the_model(s, result, "x")


def test_getitem_on_a_leaf_tuple_after_a_cut_moves_to_the_producer() -> None:
    g = GraphBuilder()
    t = g.call_module("lstm", g.placeholder("x"))
    cut_mark = g.call_module("mid", g.placeholder("h0"))
    out0 = g.getitem(t, 0)
    inner = g.getitem(out0, 1)  # a projection of a projection
    attr = g.call_function("builtins.getattr", t, "last_hidden_state")
    y = g.call_module("post", inner, attr, cut_mark)
    s = Snapshot(module("", g.output(y), {n: module(n) for n in ("lstm", "mid", "post")}))
    result = core.plan(s, ["lstm"])
    for node in (out0, inner, attr):
        assert result.stages[0].graph.node(node.name).op == "call_function"
        assert node.name not in result.stages[1].graph or node.name in result.stages[1].inputs
    assert result.liveness[1] == ("h0", inner.name, attr.name)  # never the whole tuple `t`
    _runs_like_the_model(s, result, "x", "h0")


@pytest.mark.parametrize("key, crosses_p", [("b", False), ("a", True)])
def test_dict_get_on_an_inlined_return(key: str, crosses_p: bool) -> None:
    """`d.get(key[, default])` on a returned dict is folded like getitem (the seed folds it):
    only the item read crosses, and a missing key gives the default."""
    bg = GraphBuilder()
    x = bg.placeholder("x")
    blk = module(
        "blk",
        bg.output(DictOf((("a", bg.call_module("p", x)), ("b", bg.call_module("q", x))))),
        {"p": module("blk.p"), "q": module("blk.q")},
    )
    g = GraphBuilder()
    d = g.call_module("blk", g.placeholder("x"))
    y = g.call_module("post", g.call_method("get", d, key), g.call_method("get", d, "zz", 7))
    s = Snapshot(module("", g.output(y), {"blk": blk, "post": module("post")}))
    result = core.plan(s, ["blk.p"])  # p in stage 0; q and post in stage 1
    assert [st.modules for st in result.stages] == [("blk.p",), ("blk.q", "post")]
    p = _name_of(result, "call_module", "blk.p")
    assert result.liveness[1] == (("x", p) if crosses_p else ("x",))
    post = next(n for n in result.stages[1].graph.nodes if n.target == "post")
    item = p if crosses_p else _name_of(result, "call_module", "blk.q")
    assert post.args == (Ref(item), 7)
    _runs_like_the_model(s, result, "x")


# -- kwargs --------------------------------------------------------------------------------------


def test_root_kwargs_with_defaults() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    mask = g.placeholder("mask", None)
    scale = g.placeholder("scale", 2.0)
    h = g.call_module("a", x, mask=mask)
    y = g.call_module("b", h, scale)
    s = Snapshot(module("", g.output(y), {"a": module("a"), "b": module("b")}))
    result = core.plan(s, ["a"])
    assert result.liveness == (("x", "mask", "scale"), ("scale", "a"))
    ph = {n.name: n for n in result.stages[0].graph.placeholders}
    assert ph["mask"].args == (None,) and ph["scale"].args == (2.0,)
    ev = Evaluator(s)
    x_in = Term("input", "x", (), ())
    for kwargs in ({}, {"mask": Term("input", "m", (), ())}, {"scale": 3, "mask": None}):
        assert same(ev.run_plan(result, (x_in,), kwargs), ev.run_model((x_in,), kwargs))


def test_kwargs_to_an_inlined_module_bind_by_name() -> None:
    bg = GraphBuilder()
    x = bg.placeholder("x")
    y = bg.placeholder("y")
    z = bg.placeholder("z", 5)
    h = bg.call_module("lin", x)
    h = bg.call_function("torch.add", h, y, alpha=z)
    blk = module("blk", bg.output(bg.call_module("act", h)), {"lin": module("blk.lin"), "act": module("blk.act")})
    g = GraphBuilder()
    a = g.placeholder("a")
    b = g.placeholder("b")
    out = g.call_module("blk", a, y=b)  # y by name, z left to its default
    s = Snapshot(module("", g.output(out), {"blk": blk}))
    result = core.plan(s, ["blk.lin"])
    add = next(n for n in result.stages[1].graph.nodes if n.target == "torch.add")
    assert add.args[1] == Ref("b") and add.kwargs["alpha"] == 5
    assert result.liveness[1] == ("b", _name_of(result, "call_module", "blk.lin"))
    _runs_like_the_model(s, result, "a", "b")


def test_kwarg_overrides_an_inlined_default() -> None:
    bg = GraphBuilder()
    x = bg.placeholder("x")
    z = bg.placeholder("z", 5)
    h = bg.call_function("torch.mul", bg.call_module("lin", x), z)
    blk = module("blk", bg.output(h), {"lin": module("blk.lin")})
    g = GraphBuilder()
    a = g.placeholder("a")
    out = g.call_module("post", g.call_module("blk", a, z=a))
    s = Snapshot(module("", g.output(out), {"blk": blk, "post": module("post")}))
    result = core.plan(s, ["blk.lin"])
    mul = next(n for n in result.stages[1].graph.nodes if n.target == "torch.mul")
    assert mul.args[1] == Ref("a")
    _runs_like_the_model(s, result, "a")


# -- ties ----------------------------------------------------------------------------------------

EMB = Param("storage:emb", 1000, 4000)


def _tied(last_in_stage0: bool = False) -> Snapshot:
    g = GraphBuilder()
    h = g.call_module("tok_emb", g.placeholder("ids"))
    h = g.call_module("layers.0", h)
    if last_in_stage0:
        h = g.call_module("lm_head", h)
        h = g.call_module("layers.1", h)
    else:
        h = g.call_module("layers.1", h)
        h = g.call_module("lm_head", h)
    layers = module("layers", None, {"0": module("layers.0", params={"w": Param("l0", 10, 40)}),
                                     "1": module("layers.1", params={"w": Param("l1", 10, 40)})})
    children = {
        "tok_emb": module("tok_emb", params={"weight": EMB}),
        "layers": layers,
        "lm_head": module("lm_head", params={"weight": EMB, "bias": Param("b", 10, 40)}),
    }
    return Snapshot(module("", g.output(h), children))


def test_tie_across_first_and_last_stage() -> None:
    result = core.plan(_tied(), ["layers.0"])
    assert result.ties == ((("tok_emb.weight", 0), ("lm_head.weight", 1)),)
    assert "tok_emb.weight" in result.stages[0].params and "lm_head.weight" in result.stages[1].params


def test_tie_unpartitioned_is_reported_at_stage_zero() -> None:
    result = core.plan(_tied(), [])
    assert {frozenset(g) for g in result.ties} == {frozenset({("tok_emb.weight", 0), ("lm_head.weight", 0)})}


def test_tie_inside_one_stage_is_no_group_when_partitioned() -> None:
    result = core.plan(_tied(last_in_stage0=True), ["lm_head"])
    assert result.ties == ()
    # counted once: one storage, 1000 + 10 (layers.0) + 10 (bias) elements
    assert result.stages[0].figures.params == 1000 + 10 + 10
    assert result.stages[0].figures.param_bytes == 4000 + 40 + 40


def test_tie_through_get_attr_of_the_same_name() -> None:
    g = GraphBuilder()
    h = g.call_module("tok_emb", g.placeholder("ids"))
    h = g.call_module("body", h)
    w = g.get_attr("tok_emb.weight")
    logits = g.call_function("torch.nn.functional.linear", h, w)
    s = Snapshot(module("", g.output(logits), {"tok_emb": module("tok_emb", params={"weight": EMB}),
                                               "body": module("body")}))
    result = core.plan(s, ["body"])
    assert result.ties == ((("tok_emb.weight", 0), ("tok_emb.weight", 1)),)
    # the parameter read is copied into the stage using it, never sent
    assert w.name in result.stages[1].graph and w.name not in result.liveness[1]
    assert result.stages[1].graph.node(w.name).op == "get_attr"


def test_parameter_read_in_two_stages_is_copied_not_sent() -> None:
    g = GraphBuilder()
    w = g.get_attr("scale")
    h = g.call_module("blk", g.call_function("torch.mul", g.placeholder("x"), w))
    out = g.call_function("torch.mul", h, w)
    s = Snapshot(module("", g.output(out), {"blk": module("blk")}, params={"scale": Param("s", 1, 4)}))
    result = core.plan(s, ["blk"])
    assert result.liveness == (("x",), ("blk",))  # the parameter never crosses
    for stage in result.stages:
        assert stage.graph.node(w.name).op == "get_attr" and stage.params == ("scale",)
    assert result.ties == ((("scale", 0), ("scale", 1)),)  # one storage in two stages
    _runs_like_the_model(s, result, "x")


def test_buffers_are_not_ties() -> None:
    buf = Param("storage:rope", 64, 256, buffer=True)
    g = GraphBuilder()
    h = g.call_module("a", g.placeholder("x"))
    h = g.call_module("b", h)
    s = Snapshot(module("", g.output(h), {"a": module("a", params={"cos": buf}), "b": module("b", params={"cos": buf})}))
    result = core.plan(s, ["a"])
    assert result.ties == ()
    assert result.stages[0].params == ("a.cos",) and result.stages[0].figures.params == 0


def test_tie_groups_pass_directly() -> None:
    s = _tied()
    assert tie_groups(s, [["tok_emb.weight"], ["lm_head.weight", "lm_head.bias"]]) == (
        (("tok_emb.weight", 0), ("lm_head.weight", 1)),
    )
    assert tie_groups(s, [["tok_emb.weight", "lm_head.weight"], []]) == ()
    assert tie_groups(s, [["tok_emb.weight", "lm_head.weight"]]) == (
        (("lm_head.weight", 0), ("tok_emb.weight", 0)),
    )


# -- the passes on their own ---------------------------------------------------------------------


def test_propagate_inlines_only_the_spine() -> None:
    s = _t5(2)
    flat = propagate(s, check_cuts(s, ["encoder.block.0"]))
    calls = [n.target for n in flat.graph.nodes if n.op == "call_module"]
    # encoder inlined (its blocks appear); decoder stays one call
    assert calls == ["encoder.block.0", "encoder.block.1", "encoder.final_layer_norm", "decoder", "lm_head"]
    (boundary,) = flat.boundaries
    assert flat.graph.nodes[boundary.position - 1].target == "encoder.block.0"
    assert boundary.cut == Cut("encoder.block.0")
    # every reference of the flat graph is defined before use, and names are unique
    seen: set[str] = set()
    for node in flat.graph.nodes:
        assert all(n in seen for n in node_reads(node)) and node.name not in seen
        seen.add(node.name)


def test_propagate_before_and_after_an_inlined_module() -> None:
    s = _t5(2)
    after = propagate(s, check_cuts(s, ["encoder.block.0", "encoder"]))
    before = propagate(s, check_cuts(s, ["encoder.block.0", "before:encoder"]))
    nodes = after.graph.nodes
    pos = sorted(b.position for b in after.boundaries)
    assert nodes[pos[1] - 1].target == "encoder.final_layer_norm" and nodes[pos[1]].target == "decoder"
    first_encoder = next(i for i, n in enumerate(nodes) if n.target.startswith("encoder."))
    assert sorted(b.position for b in before.boundaries)[0] == first_encoder


def _flat(nodes: list[Node], positions: list[int]) -> FlatGraph:
    return FlatGraph(Graph(tuple(nodes)), tuple(Boundary(p, Cut(f"m{p}")) for p in positions))


def test_assign_stages_directly() -> None:
    nodes = [
        Node("x", "placeholder", "x"),
        Node("w", "get_attr", "lin.weight"),
        Node("t", "call_module", "lstm", (Ref("x"),)),
        Node("h", "call_function", "torch.relu", (Ref("x"),)),  # boundary before this (index 3)
        Node("i", "call_function", GETITEM, (Ref("t"), 0)),  # projection of stage 0's t
        Node("j", "call_function", GETITEM, (Ref("h"), Ref("i"))),  # sources in stages 1 and 0
        Node("k", "call_function", "torch.mul", (Ref("j"), Ref("w"))),
        Node("output", "output", "output", (Ref("k"),)),
    ]
    assert assign_stages(_flat(nodes, [3])) == (0, ANY_STAGE, 0, 1, 0, 1, 1, 1)


def test_live_in_directly() -> None:
    nodes = [
        Node("x", "placeholder", "x"),
        Node("y", "placeholder", "y"),
        Node("a", "call_module", "a", (Ref("x"),)),
        Node("b", "call_module", "b", (Ref("a"),)),
        Node("c", "call_module", "c", (Ref("b"), Ref("x"))),
        Node("output", "output", "output", ((Ref("c"), Ref("a")),)),
    ]
    graph = Graph(tuple(nodes))
    assert live_in(graph, (0, 0, 0, 1, 2, 2), 3) == (("x", "y"), ("x", "a"), ("x", "a", "b"))
    assert live_in(graph, (0, 0, 0, 0, 0, 0), 1) == (("x", "y"),)
