"""The shortcuts that make balancing large snapshots fast (core.chain_fast) give what the full
passes give: the flat graph and boundaries of `check_cuts` + `propagate` for root-level
candidates (and None, so the full passes run and raise, whenever a condition fails), and the
prices of `core.costs.params`."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from core import costs
from core.balance import balance_report
from core.builder import GraphBuilder, module
from core.candidates import candidate_cuts
from core.chain import chain
from core.chain_fast import fast_params, root_level_flat
from core.costs import CostContext
from core.cuts import Cut
from core.errors import CutError
from core.graph import ValueInfo
from core.propagate import propagate
from core.snapshot import Param, Snapshot
from core.validate import check_cuts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from balance import gpt_snapshot  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_balance_memory import random_snapshot  # noqa: E402


def _full(snap: Snapshot, cuts: tuple[Cut, ...]) -> object:
    return propagate(snap, check_cuts(snap, cuts))


def _zoo() -> list[Snapshot]:
    pytest.importorskip("torch")
    from adapters.examples import build
    from adapters.fx import snapshot

    out = []
    for name, options in [("gpt", {"n_layers": 4}), ("t5", {}), ("structured", {}), ("slapo_list", {})]:
        example = build(name, **options)
        out.append(snapshot(example.model, *example.args, **example.kwargs))
    return out


SNAPSHOTS = [gpt_snapshot(50), *(random_snapshot(s) for s in range(6))]


@pytest.mark.parametrize("index", range(len(SNAPSHOTS)))
def test_root_level_flat_is_the_full_passes(index: int) -> None:
    snap = SNAPSHOTS[index]
    cuts = candidate_cuts(snap)
    fast = root_level_flat(snap, cuts)
    assert fast is not None
    assert fast == _full(snap, cuts)
    rng = random.Random(index)
    for _ in range(20):  # subsets, both sides, shuffled order
        chosen = rng.sample(cuts, rng.randint(1, len(cuts)))
        chosen = [Cut(c.path, rng.choice(["after", "before"])) for c in chosen]
        chosen = list({(c.path, c.side): c for c in chosen}.values())
        got = root_level_flat(snap, tuple(chosen))
        assert got is not None and got == _full(snap, tuple(chosen))


def test_zoo() -> None:
    """fx snapshots: equal where the shortcut applies (gpt's blocks), None where the candidates
    sit inside a called module (t5's encoder blocks), and chain() the same either way."""
    applied = 0
    for snap in _zoo():
        cuts = candidate_cuts(snap)
        fast = root_level_flat(snap, cuts)
        if fast is not None:
            applied += 1
            assert fast == _full(snap, cuts)
        for depth in (1, 2, 3):
            deep = candidate_cuts(snap, depth)
            got = root_level_flat(snap, deep)
            if got is not None:
                assert got == _full(snap, deep)
    assert applied >= 1


def _leafy(extra_call: str | None = None, traced_container: bool = False) -> Snapshot:
    g = GraphBuilder()
    act = ValueInfo("tensor", (2, 4), "float32", 32)
    h = g.placeholder("x", info=act)
    for i in range(3):
        h = g.call_module(f"layers.{i}", h, info=act)
    if extra_call is not None:
        h = g.call_module(extra_call, h, info=act)
    kids = {str(i): module(f"layers.{i}", params={"w": Param(f"w{i}", 4, 16)}, type_name="Linear") for i in range(3)}
    container_graph = None
    if traced_container:
        cg = GraphBuilder()
        y = cg.placeholder("y", info=act)
        container_graph = cg.output(cg.call_module("0", y, info=act))
    layers = module("layers", graph=container_graph, children=kids, type_name="Seq")
    return Snapshot(module("", g.output(h), {"layers": layers}))


def test_shortcut_declines_what_check_cuts_judges() -> None:
    plain = _leafy()
    cuts = (Cut("layers.0"), Cut("layers.1"))
    assert root_level_flat(plain, cuts) == _full(plain, cuts)
    # a module the root calls twice
    twice = _leafy(extra_call="layers.1")
    assert root_level_flat(twice, cuts) is None
    with pytest.raises(CutError):
        _full(twice, cuts)
    # an ancestor that is called (a leaf): the cut lies inside it
    inside = _leafy(extra_call="layers")
    assert root_level_flat(inside, cuts) is None
    # an ancestor that is traced could call it too
    assert root_level_flat(_leafy(traced_container=True), cuts) is None
    # duplicates, unknown paths, a call index, the root: left to check_cuts
    assert root_level_flat(plain, (Cut("layers.0"), Cut("layers.0"))) is None
    assert root_level_flat(plain, (Cut("layers.9"),)) is None
    assert root_level_flat(plain, (Cut("layers.0", call=0),)) is None
    assert root_level_flat(plain, (Cut(""),)) is None
    assert root_level_flat(plain, ()) is None


def test_fast_params_prices_as_params() -> None:
    snaps = [*SNAPSHOTS, _leafy(), *_zoo()]
    g = GraphBuilder()
    act = ValueInfo("tensor", (2, 4), "float32", 32)
    h = g.placeholder("x", info=act)
    h = g.call_module("a", h, info=act)
    h = g.call_module("b", h, info=act)
    h = g.call_module("c", h, info=act)
    w = g.get_attr("a.w")
    h = g.call_function("_operator.add", h, w, info=act)
    snaps.append(Snapshot(module("", g.output(h), {
        "a": module("a", params={"w": Param("k", 4, 16), "v": Param("k", 4, 16), "buf": Param("b", 2, 8, buffer=True)}),
        "b": module("b", params={"buf": Param("b2", 2, 8, buffer=True)}),
        "c": module("c", children={"d": module("c.d", params={"w": Param("k2", 3, 12)})}),
    })))
    for snap in snaps:
        assert snap.root.graph is not None
        where = CostContext(snap, snap.root.graph)
        fast = fast_params(snap)
        for node in snap.root.graph.nodes:
            assert fast(node, where) == costs.params(node, where), node


@pytest.mark.parametrize("index", range(len(SNAPSHOTS)))
def test_chain_and_cuts_unchanged(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain and the cuts are the same with the shortcuts and without (the full passes)."""
    snap = SNAPSHOTS[index]
    fast = chain(snap, costs.params, with_bytes=True)
    fast_cuts = [balance_report(snap, n, cost=costs.params).cuts for n in (2, 3, 5)]
    import core.chain

    monkeypatch.setattr(core.chain, "root_level_flat", lambda snapshot, cuts: None)
    monkeypatch.setattr(core.chain, "fast_params", lambda snapshot: costs.params)
    slow = chain(snap, costs.params, with_bytes=True)
    assert (fast.boundaries, fast.segment_costs, fast.boundary_bytes, fast.merged) == (
        slow.boundaries, slow.segment_costs, slow.boundary_bytes, slow.merged
    )
    assert fast.flat == slow.flat
    assert fast_cuts == [balance_report(snap, n, cost=costs.params).cuts for n in (2, 3, 5)]
