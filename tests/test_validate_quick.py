"""`check_snapshot`'s quick pass (`_modules_ok`) against the ordered reference (`_check_modules`):
on every mutated snapshot the quick pass says "fine" only where the reference finds nothing, and
`check_snapshot` raises exactly what the reference raises."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from pyrsistent import pmap

import core.validate as validate
from core.builder import GraphBuilder, module
from core.graph import Graph, Node, Ref, ValueInfo
from core.snapshot import Module, Param, Snapshot
from core.validate import MAX_COUNT, check_snapshot

Outcome = tuple[type, str] | None


def _outcome(fn: Callable[[Snapshot], object], snapshot: Snapshot) -> Outcome:
    try:
        fn(snapshot)
    except Exception as err:  # the reference may raise anything, and the check must match it
        return type(err), str(err)
    return None


def _blocks(n: int, params: Callable[[int], dict[str, Any]] | None = None,
            names: Callable[[int], Any] | None = None, paths: Callable[[int], str] | None = None,
            graph: Graph | None = None, child: Callable[[int], Any] | None = None) -> Snapshot:
    """root -> emb, blocks.0..n-1 (each with a weight, two sharing storage), head; every callable
    lets a test change one part."""
    g = GraphBuilder()
    h = g.call_module("emb", g.placeholder("x"), info=ValueInfo("tensor", (2, 3), "float32", 24))
    for i in range(n):
        h = g.call_module(f"blocks.{i}", h)
    root_graph = graph or g.output(g.call_module("head", h))
    kids = {}
    for i in range(n):
        name = names(i) if names else str(i)
        made = child(i) if child else None
        kids[name] = made if made is not None else module(
            paths(i) if paths else f"blocks.{i}",
            params=params(i) if params else {"w": Param(f"b{i}", 10 + i, 40 + 4 * i)},
        )
    tied = Param("emb", 100, 400)
    return Snapshot(module("", root_graph, {
        "emb": module("emb", params={"weight": tied}),
        "blocks": module("blocks", children=kids),
        "head": module("head", params={"weight": tied, "bias": Param("hb", 5, 20, buffer=False)}),
    }))


def _quick(snapshot: Snapshot) -> bool | None:
    """What the quick pass says; None when it raises."""
    try:
        return validate._modules_ok(snapshot)
    except Exception:
        return None


def _mutations() -> list[tuple[str, Callable[[], Snapshot]]]:
    bad_params: list[Any] = [
        {"w": "not a param"}, {"": Param("k", 1, 1)}, {"a.b": Param("k", 1, 1)}, {3: Param("k", 1, 1)},
        {"w": Param(3, 1, 1)}, {"w": Param("k", -1, 1)}, {"w": Param("k", 1, -1)},  # type: ignore[arg-type]
        {"w": Param("k", True, 1)}, {"w": Param("k", 1.0, 1)}, {"w": Param("k", MAX_COUNT + 1, 1)},  # type: ignore[arg-type]
        {"w": Param("k", 1, MAX_COUNT + 1)}, {"w": Param("k", 1, 1, buffer=1)},  # type: ignore[arg-type]
        {"w": Param("emb", 100, 401)}, {"w": Param("emb", 99, 400)}, {"w": Param("b0", 10, 40)},
        {"w": Param("b0", 11, 40)}, {"w": Param([], 1, 1)},  # type: ignore[arg-type]
    ]
    cases: list[tuple[str, Callable[[], Snapshot]]] = [("well formed", lambda: _blocks(12))]
    for k, bad in enumerate(bad_params):
        for at in (0, 5, 11):
            cases.append((f"params {k} at {at}", lambda bad=bad, at=at: _blocks(12, params=lambda i: bad if i == at else {"w": Param(f"b{i}", 10 + i, 40 + 4 * i)})))
    for at in (0, 7):
        cases += [
            (f"child key with a dot at {at}", lambda at=at: _blocks(9, names=lambda i: "a.b" if i == at else str(i))),
            (f"empty child key at {at}", lambda at=at: _blocks(9, names=lambda i: "" if i == at else str(i))),
            (f"int child key at {at}", lambda at=at: _blocks(9, names=lambda i: i if i == at else str(i))),
            (f"wrong child path at {at}", lambda at=at: _blocks(9, paths=lambda i: "blocks.x" if i == at else f"blocks.{i}")),
            (f"duplicate path at {at}", lambda at=at: _blocks(9, paths=lambda i: "blocks.1" if i == at else f"blocks.{i}")),
            (f"grandchild path at {at}", lambda at=at: _blocks(9, child=lambda i: module(f"blocks.{i}", children={"c": module("c")}) if i == at else None)),
            (f"not a module at {at}", lambda at=at: _blocks(9, child=lambda i: "junk" if i == at else None)),
            (f"children not a pmap at {at}", lambda at=at: _blocks(9, child=lambda i: Module(f"blocks.{i}", children={}) if i == at else None)),  # type: ignore[arg-type]
            (f"params not a pmap at {at}", lambda at=at: _blocks(9, child=lambda i: Module(f"blocks.{i}", params={"w": Param("z", 1, 1)}) if i == at else None)),  # type: ignore[arg-type]
            (f"graph problem below at {at}", lambda at=at: _blocks(9, child=lambda i: module(f"blocks.{i}", Graph((Node("y", "call_function", "f", (Ref("x"),)), Node("output", "output", "output", (Ref("y"),))))) if i == at else None)),
        ]
    cases += [
        ("root graph dangling", lambda: _blocks(3, graph=Graph((Node("x", "placeholder", "x"), Node("output", "output", "output", (Ref("nope"),)))))),
        ("root graph calls a missing module", lambda: _blocks(3, graph=Graph((Node("a", "call_module", "nope"), Node("output", "output", "output", (Ref("a"),)))))),
        ("graph and param problems", lambda: _blocks(5, params=lambda i: {"w": Param("q", i, 1)}, graph=Graph((Node("output", "output", "output", (Ref("nope"),)),)))),
        ("deep", lambda: Snapshot(_deep(3000))),
        ("deep, bad at the bottom", lambda: Snapshot(_deep(3000, bad=True))),
    ]
    return cases


def _deep(depth: int, bad: bool = False) -> Module:
    paths = [".".join(["m"] * d) for d in range(depth + 1)]
    node = module(paths[-1], params={"w": Param("deep", 1, -1 if bad else 1)})
    for path in reversed(paths[:-1]):
        node = module(path, children={"m": node})
    return node


@pytest.mark.parametrize("label, make", _mutations(), ids=[label for label, _ in _mutations()])
def test_the_quick_pass_agrees_with_the_ordered_check(label: str, make: Callable[[], Snapshot]) -> None:
    try:
        reference = _outcome(validate._check_modules, make())
    except Exception as err:  # the snapshot itself could not be made: nothing to compare
        pytest.skip(f"{type(err).__name__}: {err}")
    quick = _quick(make())
    if reference is not None:
        assert quick is not True  # never "fine" (False or raising: the reference runs)
    elif not label.endswith(("not a pmap at 0", "not a pmap at 7")):  # a plain dict: stricter is allowed
        assert quick is True  # the fast path is taken
    snapshot = make()
    assert _outcome(check_snapshot, snapshot) == reference
    assert snapshot._checked == (reference is None)


def test_the_quick_pass_takes_its_fast_path_on_large_snapshots() -> None:
    snapshot = _blocks(2000)
    assert validate._modules_ok(snapshot) is True
    broken = _blocks(2000, params=lambda i: {"w": Param("shared", 7 if i == 1500 else 6, 1)})
    assert validate._modules_ok(broken) is False
    message = _outcome(check_snapshot, broken)
    assert message is not None and "'blocks.1500.w' has key 'shared'" in message[1]


def test_without_the_bucket_layout_every_check_is_the_ordered_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "_PMAP_BUCKETS", False)
    for label, make in _mutations()[:20]:
        try:
            reference = _outcome(validate._check_modules, make())
        except Exception:
            continue
        assert validate._modules_ok(make()) is False, label
        assert _outcome(check_snapshot, make()) == reference, label


def test_the_bucket_probe_matches_this_pyrsistent() -> None:
    assert validate._PMAP_BUCKETS  # the fast path is on with the pinned pyrsistent
    for size in (0, 1, 2, 9, 100):
        made = pmap({str(i): i for i in range(size)})
        pairs = sorted(itertools.chain.from_iterable(b for b in made._buckets if b))  # type: ignore[attr-defined]
        assert pairs == sorted(made.items()) and made._size == size  # type: ignore[attr-defined]
