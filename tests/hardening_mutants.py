"""Valid snapshot and plan documents, and random mutations of them, for the hardening tests
(issue 13): field deletions, type swaps, extreme numbers, reference rewiring, renamed keys,
copied subtrees and deep nesting. Driven by a `random.Random`, so hypothesis (`st.randoms()`)
and a fixed-seed sample for the command line share them."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from core import DictOf, ListOf, Opaque, Param, SliceOf, Snapshot, ValueInfo, plan
from core.builder import GraphBuilder, module

Json = Any
HUGE = "__HUGE_INT__"  # replaced in the text by an integer of 5000 digits (json.dumps cannot write it)
NAN = "__BARE_NAN__"  # replaced by the non-standard token NaN
INF = "__BARE_INF__"  # replaced by -Infinity

INFO = ValueInfo("tensor", (4, 8), "float32", 128)


def base_snapshot() -> Snapshot:
    """emb (tied with head) -> enc (traced: two blocks returning a tuple, read with getitem) ->
    head, with constants of every kind, keyword arguments, a default, a leaf and a container."""
    inner = GraphBuilder()
    x = inner.placeholder("x", info=INFO)
    scale = inner.placeholder("scale", 1.0)
    h = inner.call_module("blocks.0", x, info=INFO)
    h = inner.call_module("blocks.1", h, info=INFO)
    y = inner.call_method("view", h, 4, -1, info=INFO)
    z = inner.call_function("torch.mul", y, scale, info=INFO)
    blocks = {
        str(i): module(f"enc.blocks.{i}", params={"weight": Param(f"b{i}", 64, 256)}, type_name="Linear",
                       leaf_reason="a torch.nn built-in module")
        for i in range(2)
    }
    enc = module("enc", inner.output((z, h)), {"blocks": module("enc.blocks", children=blocks, type_name="ModuleList")},
                 type_name="Encoder")
    g = GraphBuilder()
    ids = g.placeholder("ids", info=INFO)
    mask = g.placeholder("mask", None)
    e = g.call_module("emb", ids, info=INFO)
    c = g.call_function(
        "torch.clamp", e, SliceOf(None, 3, None), ListOf((1, 2.5, float("inf"))), DictOf((("k", True), (3, None))),
        Opaque("dtype:bfloat16"), (mask, "s"), info=INFO, min=0.0,
    )
    out = g.call_module("enc", c, info=ValueInfo("tuple", (2,), None, 256))
    first = g.getitem(out, 0, info=INFO)
    second = g.getitem(out, 1, info=INFO)
    s = g.call_function("_operator.add", first, second, info=INFO)
    logits = g.call_module("head", s, info=INFO)
    emb_w = Param("emb", 320, 1280)
    children = {
        "emb": module("emb", params={"weight": emb_w}, type_name="Embedding", leaf_reason="a torch.nn built-in module"),
        "enc": enc,
        "head": module("head", params={"weight": emb_w, "bias": Param("hb", 40, 160)}, type_name="Linear",
                       leaf_reason="a torch.nn built-in module"),
    }
    return Snapshot(module("", g.output(logits), children, params={"scale": Param("s", 1, 4, buffer=True)}, type_name="Model"),
                    tracer="fx")


CUTS = ["enc.blocks.0", "before:head"]


def base_documents() -> dict[str, Json]:
    snap = base_snapshot()
    return {
        "snapshot": json.loads(snap.to_json()),
        "plan": json.loads(plan(snap, CUTS).to_json()),
    }


_POOL: list[Json] = [
    None, True, False, 0, -1, 1, 2.5, -0.0, "", "x", "a.b", "output", "\u001b[31m", 'q"uote', "\\", [], {}, [1, "a"],
    {"ref": "nope"}, {"opaque": "handle:0"}, {"opaque": "dtype:os"}, {"tuple": 5}, {"slice": [1]}, {"float": "zz"},
    {"float": "nan"}, {"bogus": 1}, HUGE, NAN, INF, 2**63, 2**63 - 1, -(2**63), 2**64, 10**19, 1e308,
]
_KEYS = ["", "a.b", "0", "x y", "\u202e", "__class__", "path", "children", "graph", "extra"]


def _locations(doc: Json) -> list[tuple[Json, Any]]:
    """(container, key) of every value below the root, iteratively."""
    out: list[tuple[Json, Any]] = []
    stack = [doc]
    while stack:
        here = stack.pop()
        items = here.items() if isinstance(here, dict) else enumerate(here) if isinstance(here, list) else ()
        for key, value in items:
            out.append((here, key))
            if isinstance(value, (dict, list)):
                stack.append(value)
    return out


def _names(doc: Json) -> list[str]:
    return [v["name"] for c, k in _locations(doc) for v in [c[k]] if isinstance(v, dict) and isinstance(v.get("name"), str)]


def _deep(rng: random.Random) -> str:
    """A deeply nested value as JSON text (written here: json.dumps recurses once per level)."""
    kind = rng.choice(["lists", "tuples", "modules", "objects"])
    depth = rng.choice([40, 70, 1500])
    if kind == "lists":
        return "[" * depth + "1" + "]" * depth
    if kind == "tuples":  # an argument tree deeper than MAX_ARG_DEPTH, or not
        return '{"tuple": [' * depth + '{"ref": "x"}' + "]}" * depth
    if kind == "objects":
        return '{"k": ' * depth + "{}" + "}" * depth
    # a chain of untraced modules below one child, its paths right
    parts = [f'{{"path": {json.dumps(".".join(["c"] * level))}, "children": {{"c": ' for level in range(1, depth)]
    return "".join(parts) + f'{{"path": {json.dumps(".".join(["c"] * depth))}, "leaf_reason": "deep"}}' + "}}" * (depth - 1)


def mutate(doc: Json, rng: random.Random) -> str:
    """A mutated copy of `doc` as JSON text (1 to 3 mutations)."""
    doc = copy.deepcopy(doc)
    deep: list[str] = []
    for _ in range(rng.randint(1, 3)):
        places = _locations(doc)
        if not places:
            break
        parent, key = rng.choice(places)
        op = rng.choice(["delete", "swap", "swap", "number", "rewire", "copy", "rename", "deep"])
        if op == "delete":
            del parent[key]
        elif op == "swap":
            parent[key] = copy.deepcopy(rng.choice(_POOL))
        elif op == "number":
            parent[key] = rng.choice([-1, 2**63, 2**63 - 1, 0, 10**19, 1e308, -0.0, HUGE, NAN, INF, True, 3.0])
        elif op == "rewire":
            refs = [c[k] for c, k in places if isinstance(c[k], dict) and "ref" in c[k]]
            names = _names(doc) + ["nope", "output"]
            if refs:
                rng.choice(refs)["ref"] = rng.choice(names)
        elif op == "copy":
            other_parent, other_key = rng.choice(places)
            parent[key] = copy.deepcopy(other_parent[other_key])
        elif op == "rename" and isinstance(parent, dict):
            parent[rng.choice(_KEYS + list(parent))] = parent.pop(key)
        elif op == "deep" and rng.random() < 0.5:
            parent[key] = f"__DEEP_{len(deep)}__"
            deep.append(_deep(rng))
    text = json.dumps(doc)  # NaN/Infinity floats in the pool are written as bare tokens
    for i, nested in enumerate(deep):
        text = text.replace(f'"__DEEP_{i}__"', nested)
    return text.replace(f'"{HUGE}"', "9" * 5000).replace(f'"{NAN}"', "NaN").replace(f'"{INF}"', "-Infinity")
