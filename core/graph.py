"""The graph IR: fx's vocabulary (ops, targets, args, kwargs) as immutable data.

Arguments are trees of `Ref`s to other nodes and constants. Constants that are
not plain JSON values (dtypes, devices, tensors...) are `Opaque` tokens that only
the adapter that made the snapshot can resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeAlias, Union

from pyrsistent import PMap, pmap

Op = Literal["placeholder", "get_attr", "call_function", "call_method", "call_module", "output"]
OPS: frozenset[str] = frozenset(
    ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
)
ValueKind = Literal["tensor", "scalar", "none", "tuple", "list", "dict", "other"]


@dataclass(frozen=True, slots=True)
class Ref:
    """The value computed by the node called `name`."""

    name: str


@dataclass(frozen=True, slots=True)
class Opaque:
    """A constant the adapter resolves through its handle table (a dtype, a device...)."""

    token: str


@dataclass(frozen=True, slots=True)
class ListOf:
    """A Python list in an argument (fx keeps lists and tuples apart)."""

    items: tuple[Arg, ...]


@dataclass(frozen=True, slots=True)
class DictOf:
    """A dict literal in an argument, in insertion order."""

    items: tuple[tuple[Arg, Arg], ...]


@dataclass(frozen=True, slots=True)
class SliceOf:
    """A slice in an argument (`x[:, 1:n]`); its bounds may be references."""

    start: Arg
    stop: Arg
    step: Arg


Arg: TypeAlias = Union[Ref, Opaque, ListOf, DictOf, SliceOf, tuple["Arg", ...], str, int, float, bool, None]


def refs(arg: Arg) -> list[str]:
    """Names referenced by an argument tree, left to right."""
    out: list[str] = []
    _collect_refs(arg, out)
    return out


def _collect_refs(arg: Arg, out: list[str]) -> None:
    if type(arg) is Ref:
        out.append(arg.name)
    elif type(arg) is tuple:
        for item in arg:
            _collect_refs(item, out)
    elif type(arg) is ListOf:
        for item in arg.items:
            _collect_refs(item, out)
    elif type(arg) is DictOf:
        for key, value in arg.items:
            _collect_refs(key, out)
            _collect_refs(value, out)
    elif type(arg) is SliceOf:
        _collect_refs(arg.start, out)
        _collect_refs(arg.stop, out)
        _collect_refs(arg.step, out)


MAX_ARG_DEPTH = 64
"""How deeply argument trees may nest (tuples in lists in dicts...). fx's are a few levels deep;
the bound keeps the recursive walks over arguments (`refs`, `map_refs`) far from Python's
recursion limit, and `check_snapshot` and the JSON reader refuse deeper trees."""


def arg_depth(arg: Arg, limit: int = MAX_ARG_DEPTH) -> int:
    """How many containers deep `arg` nests (0 for a reference or a constant), counted without
    recursion; stops counting at `limit + 1`."""
    deepest = 0
    stack: list[tuple[Arg, int]] = [(arg, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is tuple:
            children: tuple[Arg, ...] = item  # type: ignore[assignment]
        elif kind is ListOf:
            children = item.items  # type: ignore[union-attr]
        elif kind is DictOf:
            children = tuple(x for pair in item.items for x in pair)  # type: ignore[union-attr]
        elif kind is SliceOf:
            children = (item.start, item.stop, item.step)  # type: ignore[union-attr]
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def map_refs(arg: Arg, fn: Callable[[str], Arg]) -> Arg:
    """The argument tree with every `Ref(name)` replaced by `fn(name)`."""
    if type(arg) is Ref:
        return fn(arg.name)
    if type(arg) is tuple:
        return tuple(map_refs(item, fn) for item in arg)
    if type(arg) is ListOf:
        return ListOf(tuple(map_refs(item, fn) for item in arg.items))
    if type(arg) is DictOf:
        return DictOf(tuple((map_refs(k, fn), map_refs(v, fn)) for k, v in arg.items))
    if type(arg) is SliceOf:
        return SliceOf(map_refs(arg.start, fn), map_refs(arg.stop, fn), map_refs(arg.step, fn))
    return arg


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """What is known about a node's value; `nbytes` counts every tensor in it."""

    kind: ValueKind
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    nbytes: int | None = None


EMPTY_KWARGS: PMap[str, Arg] = pmap()


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    op: Op
    target: str
    args: tuple[Arg, ...] = ()
    kwargs: PMap[str, Arg] = EMPTY_KWARGS
    info: ValueInfo | None = None

    def inputs(self) -> list[str]:
        """Names this node reads, args first, then kwargs (with repeats)."""
        out: list[str] = []
        for arg in self.args:
            kind = type(arg)
            if kind is Ref:  # the common case, without a call
                out.append(arg.name)  # type: ignore[union-attr]
            elif kind is tuple or kind is ListOf or kind is DictOf or kind is SliceOf:
                _collect_refs(arg, out)
        if self.kwargs:  # iterating an empty PMap costs more than all the args
            for value in self.kwargs.values():
                _collect_refs(value, out)
        return out

    def __str__(self) -> str:
        parts = [_show(a) for a in self.args] + [f"{k}={_show(v)}" for k, v in self.kwargs.items()]
        lhs = "" if self.op == "output" else f"{self.name} = "
        return f"{lhs}{self.op}[{self.target}]({', '.join(parts)})"


def _show(arg: Arg) -> str:
    if type(arg) is Ref:
        return f"%{arg.name}"
    if type(arg) is Opaque:
        return f"<{arg.token}>"
    if type(arg) is tuple:
        return "(" + ", ".join(_show(a) for a in arg) + ("," if len(arg) == 1 else "") + ")"
    if type(arg) is ListOf:
        return "[" + ", ".join(_show(a) for a in arg.items) + "]"
    if type(arg) is DictOf:
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in arg.items) + "}"
    if type(arg) is SliceOf:
        return f"{_show(arg.start)}:{_show(arg.stop)}:{_show(arg.step)}"
    return repr(arg)


Origin = Literal["process", "json"]
"""Where a graph's nodes come from: made in this process (`"process"`: traced, or built by
Python code), or read from a JSON file (`"json"`). Adapters that turn a graph back into code
trust the first and check the second (see docs/security.md)."""


@dataclass(frozen=True, slots=True)
class Graph:
    """Nodes in a topological (fx) order; the last node is the single `output`.

    `origin` is `"json"` for a graph read from a file, and for every graph derived from one (a
    plan's stage graphs); it does not take part in equality."""

    nodes: tuple[Node, ...]
    origin: Origin = field(default="process", compare=False)
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_index", MappingProxyType({n.name: i for i, n in enumerate(self.nodes)})
        )

    def __reduce__(self) -> tuple[type[Graph], tuple[tuple[Node, ...], Origin]]:
        # pickle/deepcopy rebuild the derived index (a mappingproxy cannot be pickled)
        return (Graph, (self.nodes, self.origin))

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def node(self, name: str) -> Node:
        return self.nodes[self._index[name]]

    def position(self, name: str) -> int:
        return self._index[name]

    @property
    def placeholders(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op == "placeholder")

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def bytes_of(self, names: tuple[str, ...]) -> int | None:
        """The bytes of the named values, from their value info; None when any is unknown."""
        total = 0
        for name in names:
            info = self.node(name).info
            if info is None or info.nbytes is None:
                return None
            total += info.nbytes
        return total

    def __str__(self) -> str:
        return "\n".join(str(n) for n in self.nodes)
