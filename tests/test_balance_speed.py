"""The shortcuts that make balancing large snapshots fast (core.chain_fast, core.candidates'
RootCalls, core.chain's bulk checks) give what the full passes give: the flat graph and
boundaries of `check_cuts` + `propagate` for root-level candidates (and None, so the full passes
run and raise, whenever a condition fails), the prices of `core.costs.params`, the errors of the
node-by-node price checks, and values equal to plainly constructed ones."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

from core import costs
from core.balance import balance_report
from core.builder import GraphBuilder, module
from core.candidates import candidate_calls, candidate_cuts
from core.chain import _busy, _busy_each, chain
from core.chain_fast import instances, params_prices, root_calls_flat, root_level_flat
from core.costs import CostContext
from core.cuts import Cut
from core.errors import BalanceError, CutError
from core.graph import Node, ValueInfo
from core.propagate import Boundary, FlatGraph, propagate
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


def test_params_prices_are_params() -> None:
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
        graph = snap.root.graph
        assert graph is not None
        where = CostContext(snap, graph)
        got = params_prices(snap, graph)
        assert got == [costs.params(node, where) for node in graph.nodes]
        assert {type(p) for p in got} == {float}


@pytest.mark.parametrize("index", range(len(SNAPSHOTS)))
def test_chain_and_cuts_unchanged(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain and the cuts are the same with the shortcuts and without (the full passes)."""
    snap = SNAPSHOTS[index]
    fast = chain(snap, costs.params, with_bytes=True)
    fast_cuts = [balance_report(snap, n, cost=costs.params).cuts for n in (2, 3, 5)]
    import core.chain

    monkeypatch.setattr(core.chain, "candidate_calls", lambda snapshot, given: (candidate_cuts(snapshot, given), None))
    monkeypatch.setattr(core.chain, "root_level_flat", lambda snapshot, cuts: None)
    monkeypatch.setattr(core.chain, "params", object())  # `model is params` fails: node by node
    monkeypatch.setattr(core.chain, "_busy", core.chain._busy_each)
    monkeypatch.setattr(core.chain, "_crossing_sums", lambda flat, stages: None)  # live_in's lists
    slow = chain(snap, costs.params, with_bytes=True)
    assert (fast.boundaries, fast.segment_costs, fast.boundary_bytes, fast.merged) == (
        slow.boundaries, slow.segment_costs, slow.boundary_bytes, slow.merged
    )
    assert fast.flat == slow.flat
    assert fast_cuts == [balance_report(snap, n, cost=costs.params).cuts for n in (2, 3, 5)]


@pytest.mark.parametrize("index", range(len(SNAPSHOTS)))
def test_root_calls_are_the_root_level_flat(index: int) -> None:
    """Automatic candidates placed by core.candidates (RootCalls) give the flat graph of the
    full passes, and exactly when root_level_flat's own checks accept them."""
    for snap in [SNAPSHOTS[index], *(_zoo() if index == 0 else [])]:
        cuts, calls = candidate_calls(snap)
        assert cuts == candidate_cuts(snap)
        checked = root_level_flat(snap, cuts)
        assert (calls is None) == (checked is None)
        if calls is not None:
            assert root_calls_flat(snap, cuts, calls) == checked == _full(snap, cuts)


def test_root_calls_decline_what_root_level_flat_declines() -> None:
    # a container that is traced, or called: the candidates are not placed
    for snap in (_leafy(traced_container=True), _leafy(extra_call="layers")):
        cuts, calls = candidate_calls(snap)
        assert calls is None and root_level_flat(snap, cuts) is None
    cuts, calls = candidate_calls(_leafy())
    assert calls is not None and calls.containers == frozenset({"layers"}) and calls.index == (1, 2, 3)


def test_root_calls_out_of_order_are_sorted() -> None:
    """Two numbered lists called interleaved from the root: the candidates come group by group,
    the boundaries in graph order, as propagate sorts them."""
    g = GraphBuilder()
    act = ValueInfo("tensor", (2, 4), "float32", 32)
    h = g.placeholder("x", info=act)
    for i in range(3):
        h = g.call_module(f"enc.{i}", h, info=act)
        h = g.call_module(f"dec.{i}", h, info=act)
    kids = {
        name: module(name, children={
            str(i): module(f"{name}.{i}", params={"w": Param(f"{name}{i}", 4, 16)}) for i in range(3)
        })
        for name in ("enc", "dec")
    }
    snap = Snapshot(module("", g.output(h), kids))
    cuts, calls = candidate_calls(snap)
    assert [c.path for c in cuts] == ["enc.0", "enc.1", "enc.2", "dec.0", "dec.1", "dec.2"]
    assert calls is not None
    flat = root_calls_flat(snap, cuts, calls)
    assert flat == _full(snap, cuts) == root_level_flat(snap, cuts)
    assert [b.cut.path for b in flat.boundaries] == ["enc.0", "dec.0", "enc.1", "dec.1", "enc.2", "dec.2"]


def test_instances_equal_plain_construction() -> None:
    paths = [f"blocks.{i}" for i in range(50)]
    sides = ["after", "before"] * 25
    made = instances(Cut, 50, path=paths, side=sides, call=[None, 3] * 25)
    assert made == [Cut(p, s, c) for p, s, c in zip(paths, sides, [None, 3] * 25)]  # type: ignore[arg-type]
    assert [hash(c) for c in made] == [hash(Cut(c.path, c.side, c.call)) for c in made]
    bounds = instances(Boundary, 50, position=range(50), cut=made)
    assert bounds == [Boundary(i, c) for i, c in enumerate(made)]
    # frozen as ever
    with pytest.raises(AttributeError):
        made[0].path = "x"  # type: ignore[misc]
    # classes it cannot fill directly are called: __post_init__ runs
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError(self.value)

    assert instances(Checked, 2, value=[1, 2]) == [Checked(1), Checked(2)]
    with pytest.raises(ValueError):
        instances(Checked, 1, value=[-1])
    # every field must be given: otherwise the call raises as the constructor would
    with pytest.raises(TypeError):
        instances(Boundary, 1, position=[0])


def test_busy_shortcut_is_the_node_by_node_test() -> None:
    rng = random.Random(3)
    for snap in SNAPSHOTS:
        graph = snap.root.graph
        assert graph is not None
        nodes = graph.nodes
        n = len(nodes)
        calls = [i for i, node in enumerate(nodes) if node.op == "call_module"]
        for _ in range(30):
            if rng.random() < 0.5 and calls:
                inner = sorted(set(i + 1 for i in rng.sample(calls, rng.randint(1, len(calls)))))
            else:
                inner = sorted(rng.choices(range(n + 1), k=rng.randint(0, 6)))
            edges = [0, *inner, n]
            assert _busy(nodes, edges) == _busy_each(nodes, edges)


def _reference(snap: Snapshot, model: costs.CostModel) -> tuple[float, ...]:
    """The node-by-node price checks and sums as core.chain made them before the bulk checks
    (every segment of these snapshots computes, so none is merged)."""
    flat = propagate(snap, check_cuts(snap, candidate_cuts(snap)))
    nodes = flat.graph.nodes
    where = CostContext(snap, flat.graph)
    edges = [0, *(b.position for b in flat.boundaries), len(nodes)]
    sums = []
    for start, stop in zip(edges, edges[1:]):
        here = []
        for node in nodes[start:stop]:
            price = model(node, where)
            if price:
                if not isinstance(price, (int, float)) or not 0.0 < price < math.inf:
                    raise BalanceError(f"cost of node {node.name!r}")
                here.append(float(price))
            elif not isinstance(price, (int, float)) or price != 0.0:
                raise BalanceError(f"cost of node {node.name!r}")
        sums.append(math.fsum(here))
    try:
        total = math.fsum(sums)
    except OverflowError:
        total = math.inf
    if not math.isfinite(total):
        raise BalanceError("the node costs add up to more than a float can hold")
    return tuple(sums)


def _outcome(run: object) -> object:
    try:
        return run()  # type: ignore[operator]
    except Exception as error:  # noqa: BLE001
        return type(error), str(error)[:23]


@pytest.mark.parametrize(
    "price", [math.nan, math.inf, -math.inf, -1.0, -0.0, 0, "1", None, True, 3, 10**400, 2.5, 1e308, 5e-324]
)
@pytest.mark.parametrize("later", [None, "raise", math.nan])
def test_bulk_price_checks_are_the_node_by_node_checks(price: object, later: object) -> None:
    """Bad prices raise the error of the first bad node, whatever comes after it (a model that
    raises, another bad price); good ones give the same sums."""
    snap = gpt_snapshot(6)

    def model(node: Node, where: CostContext) -> float:
        if node.target in ("blocks.1", "blocks.3"):
            return price  # type: ignore[return-value]
        if node.target == "blocks.4" and later is not None:
            if later == "raise":
                raise KeyError("from the model")
            return later  # type: ignore[return-value]
        return 1.0

    got = _outcome(lambda: chain(snap, model).segment_costs)
    assert got == _outcome(lambda: _reference(snap, model))
    if isinstance(got, tuple) and all(isinstance(c, float) for c in got):
        assert all(math.copysign(1.0, c) > 0 for c in got)  # no -0.0


def test_crossing_sums_name_the_value_without_bytes() -> None:
    """A crossing value without a byte count: the error of live_in's lists (the first such value
    at the first boundary it crosses); scalars and None without one cross for free."""
    g = GraphBuilder()
    act = ValueInfo("tensor", (2, 4), "float32", 32)
    x = g.placeholder("x", info=act)
    skip = g.call_module("pre", x, info=ValueInfo("tensor", (2, 4), "float32", None))
    flag = g.call_function("builtins.len", x, info=ValueInfo("scalar", None, None, None))
    h = x
    for i in range(3):
        h = g.call_module(f"layers.{i}", h, info=act)
    h = g.call_function("_operator.add", h, skip, info=act)
    h = g.call_function("_operator.mul", h, flag, info=act)
    kids = {str(i): module(f"layers.{i}", params={"w": Param(f"w{i}", 4, 16)}) for i in range(3)}
    snap = Snapshot(module("", g.output(h), {"layers": module("layers", children=kids), "pre": module("pre")}))
    with pytest.raises(BalanceError, match="'pre'.*crossing after:layers.0"):
        chain(snap, costs.params, with_bytes=True)


def test_segment_sums_are_fsums_of_the_slices() -> None:
    from core.chain import _sums

    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 12)
        prices = [rng.choice([0.0, -0.0, 1.0, 0.1, 1e16, 5e-324, rng.random()]) for _ in range(n)]
        inner = sorted(rng.choices(range(n + 1), k=rng.randint(0, 5)))
        edges = [0, *inner, n]
        want = [math.fsum(prices[a:b]) for a, b in zip(edges, edges[1:])]
        assert _sums(prices, edges) == want


def test_partition_shortcuts_are_the_general_path() -> None:
    """Whole float costs (scaled in C without ratios) and whole byte counts (links made by one
    multiplication) split as the same numbers given as ints and floats (the general path)."""
    from core.partition import partition_chain

    rng = random.Random(11)
    for _ in range(200):
        m = rng.randint(1, 14)
        whole = [float(rng.choice([0, 1, 2, 7, 10**6, 2**60])) for _ in range(m)]
        stages = rng.randint(1, m)
        crossing = [rng.choice([0, 1, 5, 10**9]) for _ in range(m - 1)]
        weight = rng.choice([0.0, 1e-9, 0.5, 3.0])
        fast = partition_chain(whole, stages, boundary_bytes=crossing, comm_weight=weight)
        general = partition_chain(
            [int(c) for c in whole], stages, boundary_bytes=[float(b) for b in crossing], comm_weight=weight
        )
        assert fast == general
        assert partition_chain(whole, stages) == partition_chain([int(c) for c in whole], stages)


def test_crossing_sums_are_the_live_lists() -> None:
    """Running sums over the ranges of live_in equal the bytes of its lists, on graphs with
    keyword arguments, containers and projections (the zoo), at every candidate depth."""
    from core.assign import assign_stages
    from core.chain import _crossing_sums
    from core.liveness import live_in

    checked = 0
    for snap in [*SNAPSHOTS, *_zoo()]:
        for given in (None, 1, 2, 3):
            found = chain(snap, costs.calls, given)
            flat = found.flat
            assert flat is not None
            stages = assign_stages(flat)
            got = _crossing_sums(flat, stages)
            if got is None:
                continue
            live = live_in(flat.graph, stages, len(flat.boundaries) + 1)
            want = tuple(
                sum(_bytes(flat.graph.node(name)) for name in live[k + 1])
                for k in range(len(flat.boundaries))
            )
            assert got == want
            checked += 1
    assert checked >= 10


def _bytes(node: Node) -> int:
    return 0 if node.info is None or node.info.nbytes is None else node.info.nbytes
