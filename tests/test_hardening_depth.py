"""Module trees thousands of levels deep (issue 13): planning, JSON both ways, equality,
pickling, balancing and the printed plan, with no recursion limit in the way. The timing of
the same at several depths is bench/depth.py."""

from __future__ import annotations

import pickle

import pytest

from core import Cut, Param, Plan, Snapshot, ValueInfo, balance, costs, plan
from core.builder import GraphBuilder, module
from core.dot import render_dot
from core.snapshot import Module

INFO = ValueInfo("tensor", (2, 8), "float32", 64)
DEPTH = 5000


def chain(depth: int, blocks: int = 4) -> tuple[Snapshot, str]:
    """`m` inside `m` inside ... `depth` levels (each traced, calling the next and adding one),
    the deepest holding numbered blocks; built from the bottom up, without recursion. Returns
    the snapshot and a cut after the deepest block 1, whose spine is every level."""
    paths = [".".join(["m"] * k) for k in range(depth + 1)]
    g = GraphBuilder()
    h = g.placeholder("x", info=INFO)
    for i in range(blocks):
        h = g.call_module(f"blocks.{i}", h, info=INFO)
    bottom = paths[depth]
    kids = {
        str(i): module(f"{bottom}.blocks.{i}", params={"w": Param(f"w{i}", 64, 256)}, leaf_reason="a leaf")
        for i in range(blocks)
    }
    node = module(bottom, g.output(h), {"blocks": module(f"{bottom}.blocks", children=kids)})
    for level in range(depth - 1, -1, -1):
        g = GraphBuilder()
        y = g.call_module("m", g.placeholder("x", info=INFO), info=INFO)
        node = module(paths[level], g.output(g.call_function("_operator.add", y, 1, info=INFO)), {"m": node})
    return Snapshot(node), f"{bottom}.blocks.1"


@pytest.fixture(scope="module")
def deep() -> tuple[Snapshot, str]:
    return chain(DEPTH)


def test_a_cut_5000_levels_deep_plans_and_round_trips(deep: tuple[Snapshot, str]) -> None:
    snapshot, cut = deep
    result = plan(snapshot, [cut])
    assert len(result.stages) == 2
    assert result.stages[0].modules == (f"{cut[:-1]}0", cut)  # the whole spine inlined
    assert sum(1 for n in result.stages[1].graph.nodes if n.target == "_operator.add") == DEPTH
    text = snapshot.to_json()
    back = Snapshot.from_json(text)
    assert back == snapshot and back.to_json() == text
    assert plan(back, [cut]) == result
    assert Plan.from_json(result.to_json()) == result
    assert "blocks.0-1" in str(result) and render_dot(result)


def test_balance_equality_and_pickling_5000_levels_deep(deep: tuple[Snapshot, str]) -> None:
    snapshot, cut = deep
    assert balance(snapshot, 2, cost=costs.params) == (Cut(cut),)
    assert balance(snapshot, 2, cost=costs.flops)  # whole traced modules are summed without recursion
    assert balance(snapshot, 2, cost=costs.params, candidates=3)
    copy = pickle.loads(pickle.dumps(snapshot))
    assert copy == snapshot and copy.modules.keys() == snapshot.modules.keys()
    assert repr(snapshot.root).startswith("Module(path='', ")
    other, _ = chain(DEPTH)
    changed = Module(other.root.path, "Changed", other.root.graph, other.root.children)
    assert Snapshot(changed) != snapshot and other == snapshot


def test_a_deeply_nested_document_is_read_or_refused_without_recursion_error() -> None:
    from core import MalformedSnapshot

    deep_args = '{"tuple": [' * 20000 + "1" + "]}" * 20000
    text = (
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": ['
        '{"name": "x", "op": "placeholder", "target": "x"}, '
        f'{{"name": "y", "op": "call_function", "target": "torch.relu", "args": [{deep_args}]}}, '
        '{"name": "output", "op": "output", "target": "output", "args": [{"ref": "y"}]}]}}'
    )
    with pytest.raises(MalformedSnapshot, match=r"\$\.root\.graph\[1\]\.args\[0\](\.tuple\[0\])+: the argument is nested more than 64 levels deep"):
        Snapshot.from_json(text)
    with pytest.raises(MalformedSnapshot, match="not valid JSON"):
        Snapshot.from_json("[" * 100000)
