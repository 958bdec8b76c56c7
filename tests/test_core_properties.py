"""Property tests of `core.plan` on random snapshots, against the reference in tests/reference.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import core
from core import Cut, EmptyStage, PlanError, Snapshot
from core.validate import _CallSites, call_sites
from tests.reference import (
    PROJECTIONS,
    Case,
    Evaluator,
    StageExpectation,
    cases,
    cut_sets,
    expected_stages,
    expected_ties,
    is_compute,
    node_reads,
    same,
)

# Sized so that the whole core suite stays well under 30 s on a 2-core machine.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
QUICK = settings(PROPERTY, max_examples=200)


def _planned(case: Case, cuts: list[Cut | str]) -> tuple[core.Plan, list[StageExpectation]]:
    expected = expected_stages(case.snapshot, cuts)
    if isinstance(expected, set):  # an invalid cut set: one of these errors, nothing else
        with pytest.raises(PlanError) as info:
            core.plan(case.snapshot, cuts)
        assert type(info.value) in expected, (info.value, expected)
        assume(False)
    assert isinstance(expected, list)
    return core.plan(case.snapshot, cuts), expected


@PROPERTY
@given(st.data())
def test_plan_properties(data: Any) -> None:
    """One random snapshot and cut set, every property of the plan:

    (a) running the stages one after another equals running the snapshot; (b)-(d) and the
    oracle's placement, see `_check_stages`; (e) planning a JSON round trip of the snapshot
    gives the same plan, and the plan round-trips; (f) the snapshot is unchanged and planning
    is deterministic.
    """
    case = data.draw(cases())
    cuts = data.draw(cut_sets(case.snapshot, plannable=True))
    before = case.snapshot.to_json()
    copy = Snapshot.from_json(before)
    assert copy == case.snapshot
    result, expected = _planned(case, cuts)

    ev = Evaluator(case.snapshot)  # (a)
    want = ev.run_model(case.args, case.kwargs)
    got = ev.run_plan(result, case.args, case.kwargs)
    assert same(got, want)

    _check_stages(case, cuts, result, expected)

    assert case.snapshot.to_json() == before  # (f)
    assert case.snapshot == copy
    assert core.plan(case.snapshot, cuts) == result
    assert core.plan(copy, cuts) == result  # (e)
    assert core.Plan.from_json(result.to_json()) == result


def _check_stages(case: Case, cuts: list[Cut | str], result: core.Plan, expected: list[StageExpectation]) -> None:
    """(b) closure, (c) minimality, (d) liveness[0], projections on the producing side, and the
    compute nodes, modules, parameters and ties of each stage as the spine oracle predicts."""
    stages = result.stages
    last = len(stages) - 1
    root = case.snapshot.root.graph
    assert root is not None
    assert len(stages) == len(expected) == len(cuts) + 1
    assert result.liveness[0] == tuple(n.name for n in root.nodes if n.op == "placeholder")  # (d)
    assert result.liveness == tuple(s.inputs for s in stages)

    defined_in: dict[str, int] = {}
    info_of: dict[str, object] = {}
    for s, stage in enumerate(stages):
        assert stage.index == s
        nodes = stage.graph.nodes
        # (b) closed: every reference is to an earlier node of the same graph
        seen: set[str] = set()
        for node in nodes:
            assert all(n in seen for n in node_reads(node)), (s, str(node))
            assert node.name not in seen
            seen.add(node.name)
        assert nodes[-1].op == "output" and sum(n.op == "output" for n in nodes) == 1
        placeholders = tuple(n.name for n in nodes if n.op == "placeholder")
        assert placeholders == stage.inputs
        if s == last:
            assert stage.outputs == tuple(dict.fromkeys(node_reads(nodes[-1])))
        else:
            out = nodes[-1].args[0]
            assert isinstance(out, tuple)
            assert tuple(node_reads(nodes[-1])) == stage.outputs == stages[s + 1].inputs
            assert len(set(stage.outputs)) == len(stage.outputs)
        for node in nodes:
            if node.op not in ("placeholder", "get_attr", "output"):
                assert node.name not in defined_in, f"{node.name} computed twice"
                defined_in[node.name] = s
                info_of[node.name] = node.info
            elif node.op == "placeholder" and s == 0:
                info_of[node.name] = node.info
            elif node.op == "placeholder":  # a received value keeps the info of its maker
                assert node.info == info_of[node.name]
        # compute nodes, modules, params: exactly what the oracle places in this stage
        computes = [(n.op, n.target) for n in nodes if is_compute(n)]
        assert computes == expected[s].computes, s
        assert list(stage.modules) == expected[s].modules
        assert set(stage.params) == expected[s].params
        assert list(stage.params) == sorted(stage.params)

    for name in (n.name for n in root.nodes if n.op == "placeholder"):
        defined_in[name] = 0
    reads = [
        {n for node in st_.graph.nodes if node.op != "output" for n in node_reads(node)} for st_ in stages
    ]
    reads[last] |= set(node_reads(stages[last].graph.nodes[-1]))
    for s in range(1, len(stages)):
        for name in stages[s].inputs:
            # (c) received only if this stage reads it or passes it to a later stage that needs it
            assert name in reads[s] or (s < last and name in stages[s].outputs), (s, name)
            # made before, and received by every stage since the one that made it
            origin = defined_in[name]
            assert origin < s
            assert all(name in stages[u].inputs for u in range(origin + 1, s + 1)), name
        # the producing side evaluates projections: none reads only received values
        received = set(stages[s].inputs)
        for node in stages[s].graph.nodes:
            if (node.op, node.target) in PROJECTIONS:
                sources = {n for n in node_reads(node) if stages[s].graph.node(n).op != "get_attr"}
                assert not (sources and sources <= received), f"stage {s}: {node} reads only received values"
    # each value leaves the stage that made it only if a later stage reads it
    for s in range(len(stages) - 1):
        for name in stages[s].outputs:
            assert any(name in reads[u] for u in range(s + 1, len(stages))), (s, name)

    # ties and figures from the oracle's parameter placement
    assert {frozenset(g) for g in result.ties} == expected_ties(case.snapshot, expected)
    for s, stage in enumerate(stages):
        storages = {}
        for name in expected[s].params:
            p = case.snapshot.param(name)
            assert p is not None
            if not p.buffer:
                storages[p.key] = p
        assert stage.figures.params == sum(p.numel for p in storages.values())
        assert stage.figures.param_bytes == sum(p.nbytes for p in storages.values())
        infos = [n.info for n in stage.graph.nodes if n.op == "placeholder"]
        if all(i is not None and i.nbytes is not None for i in infos):
            assert stage.figures.bytes_in == sum(i.nbytes for i in infos if i and i.nbytes)
        else:
            assert stage.figures.bytes_in is None
        if s < last:
            assert stage.figures.bytes_out == stages[s + 1].figures.bytes_in
        else:
            sent = [stage.graph.node(n).info for n in stage.outputs]
            known = all(i is not None and i.nbytes is not None for i in sent)
            assert stage.figures.bytes_out == (sum(i.nbytes for i in sent if i and i.nbytes) if known else None)


@QUICK
@given(st.data())
def test_only_documented_errors(data: Any) -> None:
    """(g) arbitrary cut text never leaks a KeyError/AssertionError; errors match the oracle."""
    case = data.draw(cases())
    paths = sorted(case.snapshot.modules)
    texts = st.one_of(
        st.sampled_from(paths),
        st.text(alphabet="abm01.:_", max_size=12),
        st.sampled_from(paths).map(lambda p: "before:" + p),
    )
    cuts: list[Cut | str] = data.draw(st.lists(texts, max_size=4))
    expected = expected_stages(case.snapshot, cuts)
    try:
        result = core.plan(case.snapshot, cuts)
    except PlanError as err:
        assert isinstance(expected, set) and type(err) in expected, (err, expected)
    else:
        assert isinstance(expected, list), expected
        assert len(result.stages) == len(cuts) + 1


@QUICK
@given(st.data())
def test_empty_stage_only_when_oracle_says_so(data: Any) -> None:
    """Valid cut points only: the plan fails iff some stage would hold no compute node."""
    case = data.draw(cases())
    cuts = data.draw(cut_sets(case.snapshot, invalid=False))
    expected = expected_stages(case.snapshot, cuts)
    if isinstance(expected, set):
        assert expected == {EmptyStage}
        with pytest.raises(EmptyStage):
            core.plan(case.snapshot, cuts)
    else:
        counts = [Counter(e.computes) for e in expected]
        result = core.plan(case.snapshot, cuts)
        assert [Counter((n.op, n.target) for n in s.graph.nodes if is_compute(n)) for s in result.stages] == counts


@QUICK
@given(cases())
def test_call_sites_found_lazily_match_the_full_scan(case: Case) -> None:
    """check_cuts scans only the graphs above a cut; that must find exactly `call_sites`."""
    full = call_sites(case.snapshot)
    lazy = _CallSites(case.snapshot)
    for path in case.snapshot.modules:
        lazy.scan_ancestors(path)
        assert lazy(path) == full.get(path, []), path
