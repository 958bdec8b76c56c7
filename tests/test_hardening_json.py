"""The JSON readers are a validation layer (issue 13): every mutant of a valid snapshot or plan
either loads and round-trips, or raises `MalformedSnapshot` / `MalformedPlan` naming the JSON
path of the bad field. No other exception, and nothing accepted silently."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import MalformedSnapshot, Plan, PlanError, Snapshot, balance, costs, plan
from core.dot import render_dot
from core.errors import MalformedPlan
from tests.hardening_mutants import CUTS, base_documents

DOCS = base_documents()
FUZZ = settings(
    max_examples=1500, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_snapshot_text(text: str) -> None:
    try:
        snapshot = Snapshot.from_json(text)
    except MalformedSnapshot as err:
        assert not isinstance(err, MalformedPlan)
        assert str(err).startswith("$"), str(err)  # the JSON path of the bad field
        return
    written = snapshot.to_json()
    again = Snapshot.from_json(written)
    assert again.to_json() == written
    if '"nan"' not in written:  # nan != nan
        assert again == snapshot
    for cuts in ([], CUTS):
        try:
            result = plan(snapshot, cuts)
        except PlanError:
            continue
        assert Plan.from_json(result.to_json()).to_json() == result.to_json()
        str(result), hash(result), render_dot(result)
    try:
        balance(snapshot, 2, cost=costs.params)
    except PlanError:
        pass


def check_plan_text(text: str) -> None:
    try:
        loaded = Plan.from_json(text)
    except MalformedPlan as err:
        assert str(err).startswith("$"), str(err)
        return
    written = loaded.to_json()
    assert Plan.from_json(written).to_json() == written
    if '"nan"' not in written:
        assert Plan.from_json(written) == loaded
    str(loaded), hash(loaded), render_dot(loaded), loaded.liveness
    assert all(isinstance(s.bypass, tuple) for s in loaded.stages)
    assert loaded.origin == "json"


@FUZZ
@given(st.randoms(use_true_random=False))
def test_snapshot_mutants_load_and_round_trip_or_raise_malformed_snapshot(rng: random.Random) -> None:
    from tests.hardening_mutants import mutate

    check_snapshot_text(mutate(DOCS["snapshot"], rng))


@FUZZ
@given(st.randoms(use_true_random=False))
def test_plan_mutants_load_and_round_trip_or_raise_malformed_plan(rng: random.Random) -> None:
    from tests.hardening_mutants import mutate

    check_plan_text(mutate(DOCS["plan"], rng))


def test_the_unmutated_documents_load() -> None:
    snapshot = Snapshot.from_json(json.dumps(DOCS["snapshot"]))
    assert snapshot.origin == "json" and plan(snapshot, CUTS).origin == "json"
    assert Plan.from_json(json.dumps(DOCS["plan"])).to_json() == json.dumps(DOCS["plan"])


def _snapshot_with(change: object) -> str:
    doc = json.loads(json.dumps(DOCS["snapshot"]))
    change(doc)  # type: ignore[operator]
    return json.dumps(doc)


def _root_node(doc: dict, name: str) -> dict:
    return next(n for n in doc["root"]["graph"] if n["name"] == name)


# The cases of the fault sweep, each with the JSON path its error must name.
SWEEP = [
    ("args is a string", lambda d: _root_node(d, "clamp").__setitem__("args", "x"), "$.root.graph[3].args: args is \"x\""),
    ("negative numel", lambda d: d["root"]["children"]["emb"]["params"]["weight"].__setitem__("numel", -1),
     "$.root.children.emb.params.weight.numel: numel is -1"),
    ("bool nbytes", lambda d: d["root"]["children"]["emb"]["params"]["weight"].__setitem__("nbytes", True),
     "$.root.children.emb.params.weight.nbytes: nbytes is true"),
    ("float numel", lambda d: d["root"]["children"]["emb"]["params"]["weight"].__setitem__("numel", 2.0),
     "$.root.children.emb.params.weight.numel: numel is 2.0"),
    ("tied sizes differ", lambda d: d["root"]["children"]["head"]["params"]["weight"].__setitem__("numel", 7),
     "$.root.children.head.params.weight: module 'head': parameter 'head.weight' has key 'emb', like 'emb.weight'"),
    ("output without argument", lambda d: d["root"]["graph"][-1].__setitem__("args", []),
     "output node 'output' has 0 arguments; it takes exactly 1"),
    ("output with two", lambda d: d["root"]["graph"][-1].__setitem__("args", [1, 2]),
     "output node 'output' has 2 arguments; it takes exactly 1"),
    ("child key with a dot", lambda d: d["root"]["children"].__setitem__("enc.blocks", {"path": "enc.blocks"}),
     '$.root.children["enc.blocks"]: child key "enc.blocks" is not a non-empty name without dots'),
    ("dangling reference", lambda d: _root_node(d, "add")["args"].__setitem__(0, {"ref": "ghost"}),
     "node 'add' uses 'ghost' but no node has that name"),
    ("cycle", lambda d: _root_node(d, "emb")["args"].__setitem__(0, {"ref": "add"}),
     "node 'emb' uses 'add' before it is defined"),
    ("unknown module", lambda d: _root_node(d, "head").__setitem__("target", "nothead"),
     "node 'head' calls module 'nothead', which is not in the module tree"),
    ("bad path", lambda d: d["root"]["children"]["enc"].__setitem__("path", "encoder"),
     '$.root.children.enc.path: module \'<root>\': module \'encoder\' is the child \'enc\''),
    ("unknown field", lambda d: d["root"].__setitem__("typo", 1), "$.root.typo: a module has an unknown field 'typo'"),
    ("code in a parameter name", lambda d: d["root"]["graph"][0].__setitem__("target", "x=__import__('os').system('id')"),
     "$.root.graph[0].target: a placeholder's target (the parameter's name) is"),
    ("keyword that is not a name", lambda d: _root_node(d, "clamp")["kwargs"].__setitem__("a=1)#", 0),
     '$.root.graph[3].kwargs["a=1)#"]: a keyword argument\'s name is'),
    ("quote in a path", lambda d: _root_node(d, "emb").__setitem__("target", 'emb"'), "holds '\"'"),
    ("bad op", lambda d: d["root"]["graph"][0].__setitem__("op", "eval"), "$.root.graph[0].op: op is \"eval\""),
]


@pytest.mark.parametrize("what, change, expected", SWEEP, ids=[case[0] for case in SWEEP])
def test_each_fault_of_the_sweep_is_refused_naming_its_json_path(what: str, change: object, expected: str) -> None:
    with pytest.raises(MalformedSnapshot) as info:
        Snapshot.from_json(_snapshot_with(change))
    assert expected in str(info.value), str(info.value)
    assert "To fix:" in str(info.value)


@pytest.mark.parametrize("token, shown", [("NaN", "NaN"), ("Infinity", "Infinity"), ("9" * 5000, "an integer of 5000 digits"),
                                          ("1e400", "inf"), ("-1", "-1")])
def test_extreme_numbers_for_sizes_are_refused(token: str, shown: str) -> None:
    text = json.dumps(DOCS["snapshot"]).replace('"numel": 320', f'"numel": {token}', 1)
    with pytest.raises(MalformedSnapshot, match=r"\$\.root\.children\.emb\.params\.weight\.numel: numel is "):
        Snapshot.from_json(text)


def _plan_with(change: object) -> str:
    doc = json.loads(json.dumps(DOCS["plan"]))
    change(doc)  # type: ignore[operator]
    return json.dumps(doc)


PLAN_SWEEP = [
    ("negative index", lambda d: d["stages"][0].__setitem__("index", -1), "$.stages[0].index: index is -1"),
    ("no stages", lambda d: (d.__setitem__("stages", []), d.__setitem__("cuts", [])), "$.stages: plan: the plan has no stages"),
    ("dangling reference", lambda d: d["stages"][1]["graph"][-1]["args"][0]["tuple"].__setitem__(0, {"ref": "ghost"}),
     "uses 'ghost' but no node has that name"),
    ("inputs not sent", lambda d: d["stages"][1]["inputs"].append("extra"), "$.stages[1]"),
    ("empty graph", lambda d: d["stages"][2].__setitem__("graph", []), "$.stages[2].graph: plan: stage 2: the graph is empty"),
    ("tie out of range", lambda d: d["ties"].append([["emb.weight", 9], ["head.weight", 0]]), "$.ties[1][0][1]"),
    ("wrong bytes", lambda d: d["stages"][1]["figures"].__setitem__("bytes_in", 1), "$.stages[1].figures.bytes_in"),
    ("missing cut", lambda d: d["cuts"].pop(), "$.cuts: plan: the plan has 3 stages and 1 cuts"),
    ("snapshot, not plan", lambda d: d.__setitem__("schema", "stagecut.snapshot/1"), "$.schema: expected schema 'stagecut.plan/1'"),
]


@pytest.mark.parametrize("what, change, expected", PLAN_SWEEP, ids=[case[0] for case in PLAN_SWEEP])
def test_each_plan_fault_is_refused_naming_its_json_path(what: str, change: object, expected: str) -> None:
    with pytest.raises(MalformedPlan) as info:
        Plan.from_json(_plan_with(change))
    assert expected in str(info.value), str(info.value)


def test_wrong_argument_types_are_type_errors() -> None:
    snapshot = Snapshot.from_json(json.dumps(DOCS["snapshot"]))
    with pytest.raises(TypeError, match=r"did you mean \['enc.blocks.0'\]"):
        plan(snapshot, "enc.blocks.0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a cut is a module path"):
        plan(snapshot, [3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="takes a core.Snapshot"):
        plan("snapshot.json", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON text"):
        Snapshot.from_json(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_stages"):
        balance(snapshot, 2.0, cost=costs.params)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost table entry 'enc'"):
        balance(snapshot, 2, cost={"enc": "3"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="takes the root Module"):
        Snapshot("root")  # type: ignore[arg-type]


def test_huge_costs_are_a_balance_error() -> None:
    from core import BalanceError

    snapshot = Snapshot.from_json(json.dumps(DOCS["snapshot"]))
    with pytest.raises(BalanceError, match="more than a float can hold"):
        balance(snapshot, 2, cost=lambda node, where: 1.5e308 if node.op == "call_module" else 0.0, candidates=1)
