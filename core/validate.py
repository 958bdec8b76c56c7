"""Pass 1: check the snapshot and the cuts; find the spine of modules to inline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from core.cuts import Cut, CutLike, as_cut
from core.errors import (
    CalledMoreThanOnce,
    CutAtRoot,
    CutError,
    CutInsideLeaf,
    DuplicateCut,
    MalformedSnapshot,
    NotCalled,
    UnknownPath,
    UnsupportedGraph,
)
from core.graph import OPS, Graph
from core.snapshot import Snapshot, join


def check_snapshot(snapshot: Snapshot) -> None:
    """Raise `MalformedSnapshot` unless every traced graph is closed, ordered and well formed,
    and every module's path is its place in the tree."""
    for module in snapshot.root.walk():
        for name, child in module.children.items():
            if child.path != join(module.path, name):
                raise MalformedSnapshot(
                    f"module {child.path!r} is the child {name!r} of {module.path or '<root>'!r}, "
                    f"so its path must be {join(module.path, name)!r}."
                )
        if module.graph is not None:
            _check_graph(module.path, module.graph, snapshot.modules)


def _check_graph(path: str, graph: Graph, modules: Mapping[str, object]) -> None:
    where = f"module {path or '<root>'!r}"
    if not graph.nodes or graph.nodes[-1].op != "output":
        raise MalformedSnapshot(f"{where}: the graph must end with one 'output' node.")
    if len(graph.nodes) != len(graph._index):
        counts = Counter(n.name for n in graph.nodes)
        dup = next(name for name, count in counts.items() if count > 1)
        raise MalformedSnapshot(f"{where}: two nodes are named {dup!r}; node names must be unique.")
    defined: set[str] = set()
    for node in graph.nodes:
        if node.op not in OPS:
            raise MalformedSnapshot(f"{where}: node {node.name!r} has unknown op {node.op!r}.")
        if node.op == "output" and node is not graph.nodes[-1]:
            raise MalformedSnapshot(f"{where}: node {node.name!r} is an output but not the last node.")
        for name in node.inputs():
            if name not in defined:
                problem = (
                    "before it is defined (a cycle, or nodes out of topological order)"
                    if name in graph
                    else "but no node has that name (a dangling reference)"
                )
                raise MalformedSnapshot(f"{where}: node {node.name!r} uses {name!r} {problem}.")
        if node.op == "call_module" and join(path, node.target) not in modules:
            raise MalformedSnapshot(
                f"{where}: node {node.name!r} calls module {node.target!r}, "
                "which is not in the module tree."
            )
        defined.add(node.name)


@dataclass(frozen=True, slots=True)
class Spine:
    """The checked cuts, and the modules to inline so that every cut reaches the root graph."""

    cuts: tuple[Cut, ...]
    inline: frozenset[str]


def call_sites(snapshot: Snapshot) -> dict[str, list[tuple[str, str]]]:
    """Module path -> the (caller path, node name) of each call_module node calling it."""
    sites: dict[str, list[tuple[str, str]]] = {}
    for module in snapshot.root.walk():
        if module.graph is None:
            continue
        for node in module.graph.nodes:
            if node.op == "call_module":
                sites.setdefault(join(module.path, node.target), []).append((module.path, node.name))
    return sites


class _CallSitesOf:
    """`call_sites(snapshot)[path]`, scanning only the graphs that can call `path`: a graph calls
    modules below its own (targets are relative), so only `path`'s ancestors. Each graph is
    scanned once, and the graphs of modules beside the spine never."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._modules = snapshot.modules
        self._tables: dict[str, dict[str, list[tuple[str, str]]]] = {}

    def __call__(self, path: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        ancestors = [""] + [path[:i] for i, ch in enumerate(path) if ch == "."]
        for caller in ancestors:
            table = self._tables.get(caller)
            if table is None:
                table = self._tables[caller] = self._scan(caller)
            out.extend(table.get(path, ()))
        return out

    def _scan(self, caller: str) -> dict[str, list[tuple[str, str]]]:
        table: dict[str, list[tuple[str, str]]] = {}
        module = self._modules.get(caller)
        if module is not None and module.graph is not None:
            for node in module.graph.nodes:
                if node.op == "call_module":
                    table.setdefault(join(caller, node.target), []).append((caller, node.name))
        return table


def check_cuts(snapshot: Snapshot, cuts: Iterable[CutLike]) -> Spine:
    """Normalise and check the cuts; raise a `CutError` naming the path and the fix."""
    checked = tuple(as_cut(c) for c in cuts)
    seen: set[Cut] = set()
    for cut in checked:
        if cut.side not in ("after", "before"):
            raise CutError(f"cut {cut.path!r}: side {cut.side!r} is neither 'after' nor 'before'.")
        if cut in seen:
            raise DuplicateCut(str(cut))
        seen.add(cut)
    sites = _CallSitesOf(snapshot)
    inline: set[str] = set()
    for cut in checked:
        if not cut.path:
            raise CutAtRoot()
        path = cut.path
        while path:  # climb the call chain to the root
            caller = _unique_caller(snapshot, sites, path, cut.path)
            if not caller or caller in inline:
                break
            inline.add(caller)
            path = caller
    for path in inline:
        _check_inlinable(snapshot, path)
    return Spine(checked, frozenset(inline))


def _unique_caller(
    snapshot: Snapshot, sites: Callable[[str], list[tuple[str, str]]], path: str, cut_path: str
) -> str:
    modules = snapshot.modules
    if path not in modules:
        raise UnknownPath(cut_path, modules.keys())
    calls = sites(path)
    if len(calls) > 1:
        raise CalledMoreThanOnce(cut_path, path, calls[0][0], len(calls))
    if calls:
        return calls[0][0]
    # Not called: inside an untraced module, or a container such as ModuleList.
    parent = path
    while parent:
        parent = parent.rpartition(".")[0]
        owner = modules[parent]
        if owner.graph is not None:
            break
        if owner.leaf_reason is not None or not parent:
            raise CutInsideLeaf(cut_path, parent, owner.leaf_reason)
    raise NotCalled(path, (join(path, c) for c in modules[path].children), cut_path)


def _check_inlinable(snapshot: Snapshot, path: str) -> None:
    graph = snapshot.modules[path].graph
    assert graph is not None  # a caller always has a graph
    for node in graph.placeholders:
        if node.target.startswith("*"):
            raise UnsupportedGraph(
                f"module {path!r} takes {node.target}, which cannot be inlined to reach a cut "
                "inside it; give its forward explicit parameters, or cut at the module itself."
            )
