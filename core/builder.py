"""Build snapshots by hand: for tests, demos and schedulers that do not use torch.

    g = GraphBuilder()
    x = g.placeholder("x")
    h = g.call_module("layers.0", x)
    root = Module("", graph=g.output(h), children=...)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pyrsistent import pmap

from core.graph import Arg, Graph, Node, Op, Ref, ValueInfo
from core.rules import GETITEM
from core.snapshot import Module, Param

_NOT_NAME = re.compile(r"[^0-9a-zA-Z_]+")


class GraphBuilder:
    """Appends nodes with fx-like unique names; `output()` returns the finished immutable Graph."""

    def __init__(self) -> None:
        self._nodes: list[Node] = []
        self._taken: set[str] = set()
        self._next: dict[str, int] = {}  # base name -> the suffix to try next (names never free up)

    def _add(
        self, op: Op, target: str, args: tuple[Arg, ...], kwargs: Mapping[str, Arg], info: ValueInfo | None, name: str | None
    ) -> Ref:
        base = name or _NOT_NAME.sub("_", target.rpartition(".")[2] if op == "call_function" else target).strip("_")
        unique, n = base or op, self._next.get(base, 0)
        if unique in self._taken:
            # The first free `base_<n>`, n >= 1; suffixes below `_next[base]` are all taken already.
            n = max(n, 1)
            while (unique := f"{base}_{n}") in self._taken:
                n += 1
            self._next[base] = n + 1
        self._taken.add(unique)
        self._nodes.append(Node(unique, op, target, args, pmap(kwargs), info))
        return Ref(unique)

    def placeholder(self, target: str, *default: Arg, info: ValueInfo | None = None) -> Ref:
        return self._add("placeholder", target, tuple(default), {}, info, None)

    def get_attr(self, target: str, info: ValueInfo | None = None) -> Ref:
        return self._add("get_attr", target, (), {}, info, None)

    def call_module(self, target: str, *args: Arg, info: ValueInfo | None = None, **kwargs: Arg) -> Ref:
        return self._add("call_module", target, args, kwargs, info, None)

    def call_function(self, target: str, *args: Arg, info: ValueInfo | None = None, **kwargs: Arg) -> Ref:
        return self._add("call_function", target, args, kwargs, info, None)

    def call_method(self, target: str, *args: Arg, info: ValueInfo | None = None, **kwargs: Arg) -> Ref:
        return self._add("call_method", target, args, kwargs, info, None)

    def getitem(self, value: Arg, key: Arg, info: ValueInfo | None = None) -> Ref:
        return self._add("call_function", GETITEM, (value, key), {}, info, "getitem")

    def output(self, value: Arg) -> Graph:
        self._add("output", "output", (value,), {}, None, "output")
        return Graph(tuple(self._nodes))


def module(
    path: str,
    graph: Graph | None = None,
    children: Mapping[str, Module] | None = None,
    params: Mapping[str, Param] | None = None,
    type_name: str = "",
    leaf_reason: str | None = None,
) -> Module:
    """A `Module` from plain mappings."""
    return Module(path, type_name, graph, pmap(children or {}), pmap(params or {}), leaf_reason)
