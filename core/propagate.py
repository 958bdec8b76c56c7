"""Pass 2: upward propagation. Inline the spine so that every cut is a position in the root graph.

Each module on the path from a cut to the root is inlined into its caller: its placeholders
become the caller's arguments, its nodes are renamed `<call node>.<node>`, and its returned
tree replaces the call. Item reads of a returned tuple/dict are folded away, so later code
refers to the items directly. Modules off the spine stay whole, as call_module nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyrsistent import pmap

from core.cuts import Cut
from core.errors import MalformedSnapshot, PlanError
from core.graph import Arg, DictOf, Graph, ListOf, Node, Ref, map_refs
from core.rules import GETITEM
from core.snapshot import Snapshot, join
from core.validate import Spine


@dataclass(frozen=True, slots=True)
class Boundary:
    """A stage starts at `position` of the flat graph because of `cut`."""

    position: int
    cut: Cut


@dataclass(frozen=True, slots=True)
class FlatGraph:
    """The root graph with the spine inlined, and the stage boundaries in it (sorted)."""

    graph: Graph
    boundaries: tuple[Boundary, ...]


def propagate(snapshot: Snapshot, spine: Spine) -> FlatGraph:
    root = snapshot.root
    if root.graph is None:
        why = f" ({root.leaf_reason})" if root.leaf_reason else ""
        raise PlanError(f"the root module was not traced{why}; there is no graph to plan.")
    inliner = _Inliner(snapshot, spine)
    inliner.emit_root(root.graph)
    boundaries = []
    for cut in spine.cuts:
        start, end = inliner.spans[cut.path][cut.call or 0]
        boundaries.append(Boundary(end if cut.side == "after" else start, cut))
    boundaries.sort(key=lambda b: b.position)
    return FlatGraph(Graph(tuple(inliner.out)), tuple(boundaries))


@dataclass(slots=True)
class _Frame:
    """One graph being emitted: the root's, or an inlined module's (resumed after each callee)."""

    nodes: tuple[Node, ...]
    index: int
    path: str  # the module whose graph this is
    prefix: str  # prepended to the names of its nodes
    env: dict[str, Arg]  # its node names -> their values in the flat graph
    rename: bool  # False for the root graph: its names are kept
    # An inlined module: where its returned value goes (the caller's env and call node name),
    # its path and the flat position its nodes start at (its span, for cuts at it).
    caller_env: dict[str, Arg] | None = None
    call_name: str = ""
    start: int = 0


class _Inliner:
    """Emits the flat node list; local mutable state, never visible outside `propagate`.

    Iterative: an explicit stack of `_Frame`s replaces recursion into inlined modules, so a spine
    thousands of modules deep inlines without touching Python's recursion limit."""

    def __init__(self, snapshot: Snapshot, spine: Spine) -> None:
        self.modules = snapshot.modules
        self.inline = spine.inline
        self.cut_paths = frozenset(c.path for c in spine.cuts)
        self.out: list[Node] = []
        self.spans: dict[str, list[tuple[int, int]]] = {}  # path -> the span of each call, in order

    def emit_root(self, graph: Graph) -> None:
        # Root names are kept; `env` only holds names whose value changed (inlined or folded).
        frames = [_Frame(graph.nodes, 0, "", "", {}, rename=False)]
        while frames:
            frame = frames[-1]
            if frame.index == len(frame.nodes):
                if frame.caller_env is not None:  # pragma: no cover - check_snapshot ensures an output
                    raise MalformedSnapshot(f"module {frame.path!r}: graph without output")
                frames.pop()
                continue
            node = frame.nodes[frame.index]
            frame.index += 1
            if frame.caller_env is not None:  # an inlined module's graph
                if node.op == "placeholder":
                    continue  # bound by the caller
                if node.op == "output":
                    frames.pop()
                    env = frame.env
                    frame.caller_env[frame.call_name] = map_refs(node.args[0] if node.args else None, env.__getitem__)
                    self.spans.setdefault(frame.path, []).append((frame.start, len(self.out)))
                    continue
            callee = self._emit(node, frame)
            if callee is not None:
                frames.append(callee)

    def _emit(self, node: Node, frame: _Frame) -> _Frame | None:
        """Emit `node` of `frame`'s graph; an inlined call returns the callee's frame instead."""
        path, prefix, env, rename = frame.path, frame.prefix, frame.env, frame.rename

        def sub(name: str) -> Arg:
            return env[name] if rename or name in env else Ref(name)

        args, kwargs = node.args, node.kwargs
        if rename or any(n in env for n in node.inputs()):
            args = tuple(map_refs(a, sub) for a in node.args)
            if node.kwargs:
                kwargs = pmap({k: map_refs(v, sub) for k, v in node.kwargs.items()})
        target = node.target
        if node.op == "call_module":
            target = join(path, node.target)
            if target in self.inline:
                graph = self.modules[target].graph
                assert graph is not None  # the spine only holds traced modules
                return _Frame(
                    graph.nodes, 0, target, f"{prefix}{node.name}.", self._bind(target, args, kwargs),
                    rename=True, caller_env=env, call_name=node.name, start=len(self.out),
                )
        elif node.op == "get_attr":
            target = join(path, node.target)
        if self._fold(node, args, env):
            return None
        self._record_call(target if node.op == "call_module" else None)
        if not rename and args is node.args and kwargs is node.kwargs and target == node.target:
            self.out.append(node)  # an untouched root node: no copy
            return None
        name = prefix + node.name
        self.out.append(Node(name, node.op, target, args, kwargs, node.info))
        if rename:
            env[node.name] = Ref(name)
        return None

    def _record_call(self, callee: str | None) -> None:
        """A cut at a module that stays whole spans exactly its call node."""
        if callee is not None and callee in self.cut_paths:
            self.spans.setdefault(callee, []).append((len(self.out), len(self.out) + 1))

    def _bind(self, path: str, args: tuple[Arg, ...], kwargs: Mapping[str, Arg]) -> dict[str, Arg]:
        graph = self.modules[path].graph
        assert graph is not None
        placeholders = graph.placeholders
        unknown = [k for k in kwargs if not any(ph.target == k for ph in placeholders)]
        if len(args) > len(placeholders) or unknown:
            what = f"keyword {unknown[0]!r}" if unknown else f"{len(args)} arguments"
            raise MalformedSnapshot(
                f"module {path!r} is called with {what}, but its graph takes "
                f"{', '.join(ph.target for ph in placeholders) or 'nothing'}; the caller's call_module "
                "node and the module's graph disagree. Fix the snapshot's writer."
            )
        env: dict[str, Arg] = {}
        for i, ph in enumerate(placeholders):
            if i < len(args):
                env[ph.name] = args[i]
            elif ph.target in kwargs:
                env[ph.name] = kwargs[ph.target]
            elif ph.args:
                env[ph.name] = ph.args[0]  # the parameter's default
            else:
                raise MalformedSnapshot(
                    f"module {path!r} is called without a value for its parameter {ph.target!r}."
                )
        return env

    @staticmethod
    def _fold(node: Node, args: tuple[Arg, ...], env: dict[str, Arg]) -> bool:
        """An item read of a literal tuple/list/dict (an inlined return value) is the item itself:
        `getitem`, and a dict's `.get(key[, default])` as in the seed."""
        if node.op == "call_method" and node.target == "get" and len(args) in (2, 3) and not node.kwargs:
            entries = _constant_keys(args[0])
            if entries is None or not _is_key(args[1]):
                return False
            value = args[2] if len(args) == 3 else None
            for k, v in entries:  # the last duplicate wins, as in a dict literal
                if k == args[1] and type(k) is type(args[1]):
                    value = v
            env[node.name] = value
            return True
        if node.op != "call_function" or node.target != GETITEM or len(args) != 2:
            return False
        container, key = args
        if not _is_key(key):
            return False
        items: tuple[Arg, ...] | None = None
        if type(container) is tuple:
            items = container
        elif type(container) is ListOf:
            items = container.items
        if items is not None and isinstance(key, int) and -len(items) <= key < len(items):
            env[node.name] = items[key]
            return True
        entries = _constant_keys(container)
        if entries is not None:
            for k, v in reversed(entries):  # the last duplicate wins, as in a dict literal
                if k == key and type(k) is type(key):
                    env[node.name] = v
                    return True
        return False


def _is_key(arg: Arg) -> bool:
    return not isinstance(arg, bool) and isinstance(arg, (int, str))


def _constant_keys(container: Arg) -> tuple[tuple[Arg, Arg], ...] | None:
    """The items of a dict literal whose keys are all int/str constants (so a lookup is exact)."""
    if type(container) is DictOf and all(_is_key(k) for k, _ in container.items):
        return container.items
    return None
