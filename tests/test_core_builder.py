"""`core.builder`: hand-built snapshots get fx-like unique node names."""

from __future__ import annotations

from core.builder import GraphBuilder, module
from core.graph import Ref
from core.snapshot import Snapshot


def test_names_follow_fx() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    names = [
        g.call_function("torch.add", x, x),  # the function's name, not its module
        g.call_function("_operator.add", x, x),
        g.call_module("layers.0", x),  # dots become underscores
        g.call_method("add", x),
        g.getitem(x, 0),
        g.getitem(x, 1),
        g.get_attr("layers.0.weight"),
    ]
    assert [r.name for r in names] == ["add", "add_1", "layers_0", "add_2", "getitem", "getitem_1", "layers_0_weight"]
    graph = g.output(names[0])
    assert graph.nodes[-1].name == "output" and graph.nodes[-1].args == (Ref("add"),)


def test_names_skip_suffixes_already_taken() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    taken = g.call_module("add_1", x)  # takes "add_1" before any "add" exists
    first = g.call_function("torch.add", x)
    second = g.call_function("torch.add", x)  # "add_1" is taken: the next free suffix
    third = g.call_function("torch.add", x)
    also = g.call_module("add_2", x)  # "add_2" is taken by then: suffixed in its own series
    assert [r.name for r in (taken, first, second, third, also)] == ["add_1", "add", "add_2", "add_3", "add_2_1"]


def test_many_repeats_stay_unique_and_in_order() -> None:
    g = GraphBuilder()
    h = g.placeholder("h")
    for _ in range(2000):
        h = g.call_function("torch.relu", h)
    graph = g.output(h)
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == len(names)
    assert names[1:4] == ["relu", "relu_1", "relu_2"] and names[-2] == "relu_1999"


def test_module_helper() -> None:
    g = GraphBuilder()
    root = module("", g.output(g.call_module("a", g.placeholder("x"))), {"a": module("a", type_name="Linear")})
    snap = Snapshot(root)
    assert set(snap.modules) == {"", "a"} and snap.modules["a"].type_name == "Linear"
    assert snap.modules["a"].graph is None and snap.modules["a"].leaf_reason is None
