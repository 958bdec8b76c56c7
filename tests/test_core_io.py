"""The plan as data: determinism, purity, JSON, pickling, the printed table, and no torch."""

from __future__ import annotations

import copy
import gc
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import core
from core import DictOf, ListOf, MalformedSnapshot, Opaque, Plan, SliceOf, Snapshot, ValueInfo
from core.builder import GraphBuilder, module
from core.snapshot import Param

ROOT = Path(__file__).resolve().parents[1]
MB = ValueInfo("tensor", (8, 128), "float32", 512)


def _model(blocks: int = 6, info: ValueInfo | None = MB) -> Snapshot:
    """emb -> layers.0..n-1 (a traced Sequential; each block also reads the embedding) -> head,
    with the head tied to the embedding, constants of every kind, and root defaults."""
    lg = GraphBuilder()
    h = lg.placeholder("h", info=info)
    e = lg.placeholder("emb", info=info)
    for i in range(blocks):
        h = lg.call_module(str(i), h, e, info=info)
    layers = module(
        "layers",
        lg.output(h),
        {str(i): module(f"layers.{i}", params={"w": Param(f"w{i}", 100 * (i + 1), 400 * (i + 1))}) for i in range(blocks)},
    )
    g = GraphBuilder()
    ids = g.placeholder("ids", info=info)
    mask = g.placeholder("mask", None, info=info)
    emb = g.call_module("emb", ids, info=info)
    x = g.call_function(
        "torch.clamp",
        emb,
        SliceOf(None, 3, None),
        ListOf((1, 2.5, float("inf"))),
        DictOf((("k", True), (3, None))),
        Opaque("dtype:torch.bfloat16"),
        (mask, "s"),
        info=info,
    )
    y = g.call_module("layers", x, emb, info=info)
    out = g.call_module("head", y, info=info)
    emb_w = Param("emb", 5000, 20000)
    children = {
        "emb": module("emb", params={"weight": emb_w}),
        "layers": layers,
        "head": module("head", params={"weight": emb_w, "bias": Param("hb", 50, 200)}),
    }
    return Snapshot(module("", g.output(out), children))


CUTS = ["layers.1", "before:layers.4"]


def test_plan_is_deterministic_and_leaves_the_snapshot_alone() -> None:
    s = _model()
    frozen = copy.deepcopy(s)
    text = s.to_json()
    a = core.plan(s, CUTS)
    b = core.plan(s, CUTS)
    assert a == b and str(a) == str(b) and a.to_json() == b.to_json()
    assert s == frozen and s.to_json() == text
    assert core.plan(frozen, CUTS) == a


def test_snapshot_json_round_trip() -> None:
    s = _model()
    back = Snapshot.from_json(s.to_json())
    assert back == s
    assert back.to_json() == s.to_json()
    assert core.plan(back, CUTS) == core.plan(s, CUTS)
    json.loads(s.to_json())  # plain JSON: no NaN/Infinity tokens
    assert "Infinity" not in s.to_json()
    assert back.root.graph is not None
    items = back.root.graph.node("clamp").args[2]
    assert isinstance(items, ListOf) and items.items[2] == float("inf")


def test_plan_json_round_trip() -> None:
    p = core.plan(_model(), CUTS)
    back = Plan.from_json(p.to_json())
    assert back == p
    assert back.liveness == p.liveness and back.ties == p.ties and str(back) == str(p)


def test_pickle_and_deepcopy() -> None:
    s = _model()
    p = core.plan(s, CUTS)
    for obj in (s, p, s.root.graph):
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert copy.deepcopy(obj) == obj
    graph = pickle.loads(pickle.dumps(p.stages[1].graph))
    assert graph.node(p.stages[1].inputs[0]).op == "placeholder"  # the index is rebuilt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "[]",
        "5",
        "null",
        '{"schema": "stagecut.plan/1"}',
        '{"schema": "stagecut.snapshot/2", "root": {}}',
        '{"schema": "stagecut.snapshot/1"}',
        '{"schema": "stagecut.snapshot/1", "root": 5}',
        '{"schema": "stagecut.snapshot/1", "root": {}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": 3}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": [{"name": "x"}]}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": [{"name": "x", "op": "nope", "target": "x"}]}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": [{"name": "x", "op": "placeholder", "target": "x", "args": [{"what": 1}]}]}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": [{"name": "x", "op": "placeholder", "target": "x", "args": [{"slice": [1]}]}]}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": [{"name": "x", "op": "placeholder", "target": "x", "kwargs": [1]}]}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "graph": [{"name": "x", "op": "placeholder", "target": "x", "info": {"shape": 3}}]}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "params": {"w": {"key": "k"}}}}',
        '{"schema": "stagecut.snapshot/1", "root": {"path": "", "children": [1]}}',
    ],
)
def test_bad_snapshot_json(text: str) -> None:
    with pytest.raises(MalformedSnapshot):
        Snapshot.from_json(text)


def test_bad_plan_json() -> None:
    good = json.loads(core.plan(_model(), CUTS).to_json())
    with pytest.raises(MalformedSnapshot):
        Plan.from_json(_model().to_json())  # a snapshot is not a plan
    for field in ("stages", "ties", "cuts"):
        broken = dict(good)
        del broken[field]
        with pytest.raises(MalformedSnapshot):
            Plan.from_json(json.dumps(broken))
    broken = json.loads(json.dumps(good))
    broken["stages"][0]["graph"][0]["kwargs"] = [1]
    with pytest.raises(MalformedSnapshot):
        Plan.from_json(json.dumps(broken))
    broken = json.loads(json.dumps(good))
    del broken["stages"][1]["figures"]
    with pytest.raises(MalformedSnapshot):
        Plan.from_json(json.dumps(broken))


def test_plan_leaves_the_garbage_collector_as_it_found_it() -> None:
    """plan pauses the cyclic GC for speed; it must restore the caller's setting, on errors too."""
    s = _model()
    assert gc.isenabled()
    core.plan(s, CUTS)
    assert gc.isenabled()
    with pytest.raises(core.UnknownPath):
        core.plan(s, ["nope"])
    assert gc.isenabled()
    gc.disable()
    try:
        core.plan(s, CUTS)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_core_never_imports_torch() -> None:
    modules = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys, importlib\n"
        "import core\n"
        f"for m in {modules!r}: importlib.import_module('core.' + m)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- the table ---------------------------------------------------------------------------------


def _row(table: str, index: int) -> list[str]:
    rows = [line.split() for line in table.splitlines() if re.match(rf"^\s*{index}\s", line)]
    assert len(rows) == 1, table
    return rows[0]


def test_table_fits_80_columns_and_shows_the_figures() -> None:
    s = _model(blocks=6)
    p = core.plan(s, CUTS)
    table = str(p)
    assert all(len(line) <= 80 for line in table.splitlines()), table
    # stage 0: emb (5000, tied) + layers.0-1 (100 + 200); stage 1: layers.2-3 (300 + 400);
    # stage 2: layers.4-5 (500 + 600) + head (5000 tied + 50 bias).
    assert [st.figures.params for st in p.stages] == [5300, 700, 6150]
    # inputs: ids+mask (2 x 512B); stage 1 and 2 receive h and emb (the value crossing and the
    # embedding every block reads)
    assert [st.figures.bytes_in for st in p.stages] == [1024, 1024, 1024]
    assert [st.figures.bytes_out for st in p.stages] == [1024, 1024, 512]
    for st, params in zip(p.stages, ["5.3k", "700", "6.2k"]):
        row = _row(table, st.index)
        assert params in row and "1.0kB" in row, row
    assert "512B" in _row(table, 2)
    # the tie group is listed under the stages, with its stages
    assert "emb.weight @0" in table and "head.weight @2" in table


def test_table_unknown_sizes_and_long_names() -> None:
    blocks = 40
    p = core.plan(_model(blocks=blocks, info=None), ["layers.0", "layers.38"])
    table = str(p)
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert all(st.figures.bytes_in is None and st.figures.bytes_out is None for st in p.stages)
    assert "?" in _row(table, 1)
    # consecutive blocks are shown as a range, not 37 names
    assert "layers.1-38" in table
