"""A snapshot of a model: its module tree, the graphs of the traced modules, its parameters."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pyrsistent import PMap, pmap

from core.graph import Graph, Origin


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter (or buffer); equal `key`s mean one storage under several names (tied)."""

    key: str
    numel: int
    nbytes: int
    buffer: bool = False


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Module:
    """One module of the tree; `graph is None` means it was not traced (a leaf).

    Equality, hashing, `repr` and pickling walk the tree without recursion, so trees thousands
    of levels deep compare, print and travel between processes."""

    path: str
    type_name: str = ""
    graph: Graph | None = None
    children: PMap[str, Module] = field(default_factory=pmap)
    params: PMap[str, Param] = field(default_factory=pmap)
    leaf_reason: str | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Module):
            return NotImplemented
        stack: list[tuple[Module, Module]] = [(self, other)]
        while stack:
            a, b = stack.pop()
            if a is b:
                continue
            if (
                a.path != b.path
                or a.type_name != b.type_name
                or a.leaf_reason != b.leaf_reason
                or a.params != b.params
                or a.graph != b.graph
                or len(a.children) != len(b.children)
            ):
                return False
            for name, child in a.children.items():
                twin = b.children.get(name)
                if twin is None:
                    return False
                stack.append((child, twin))
        return True

    def __hash__(self) -> int:
        # shallow (equal modules agree on all of it): hashing never walks the tree
        return hash((self.path, self.type_name, self.leaf_reason, len(self.children), len(self.params)))

    def __repr__(self) -> str:
        graph = "None" if self.graph is None else f"<{len(self.graph)} nodes>"
        kids = ", ".join(repr(k) for k, _ in self.ordered_children())
        return (
            f"Module(path={self.path!r}, type_name={self.type_name!r}, graph={graph}, "
            f"children=[{kids}], params={dict(self.params)!r}, leaf_reason={self.leaf_reason!r})"
        )

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # the whole subtree as one flat list (parents first), rebuilt bottom-up by `_rebuild`
        records = []
        for module in self.walk(ordered=False):
            records.append((module.path, module.type_name, module.graph, module.params,
                            module.leaf_reason, tuple(module.children)))
        return (_rebuild, (records,))

    def ordered_children(self) -> list[tuple[str, Module]]:
        """Children in natural name order (`blocks.2` before `blocks.10`): a PMap keeps no
        insertion order, and hash order changes from one process to the next."""
        items = list(self.children.items())
        return sorted(items, key=lambda item: _natural(item[0])) if len(items) > 1 else items

    def walk(self, ordered: bool = True) -> Iterator[Module]:
        """This module and all below it, parents first; children in natural name order, or in
        no particular order with `ordered=False` (cheaper, for order-free sums)."""
        stack = [self]  # iterative: nested generators cost a frame per level per module
        while stack:
            module = stack.pop()
            yield module
            if module.children:
                if ordered:
                    stack.extend(child for _, child in reversed(module.ordered_children()))
                else:
                    stack.extend(module.children.values())


def _rebuild(records: list[tuple[str, str, Graph | None, PMap[str, Param], str | None, tuple[str, ...]]]) -> Module:
    """The module tree `Module.__reduce__` flattened: each record's children are the records
    that follow it, in `walk` order; built from the leaves up, without recursion."""
    # walk(ordered=False) pushes a module's children and pops the last pushed first, so a
    # module's subtree is the contiguous run of records after it.
    built: list[Module | None] = [None] * len(records)
    ends = [0] * len(records)
    for i in range(len(records) - 1, -1, -1):
        path, type_name, graph, params, leaf_reason, keys = records[i]
        children: dict[str, Module] = {}
        j = i + 1
        for key in reversed(keys):  # the last key pushed is the first record after i
            child = built[j]
            assert child is not None
            children[key] = child
            j = ends[j]
        ends[i] = j
        built[i] = Module(path, type_name, graph, pmap(children), params, leaf_reason)
    root = built[0]
    assert root is not None
    return root


def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    if name.isdigit():
        return ((0, int(name), ""),)
    if not _DIGITS.search(name):
        return ((1, 0, name),)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name) if part)


_DIGITS = re.compile(r"(\d+)")


def join(prefix: str, name: str) -> str:
    """The qualified path of `name` inside the module at `prefix`."""
    return f"{prefix}.{name}" if prefix else name


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The model's module tree; `tracer` names the frontend that made it ("fx", "export", or ""
    for a snapshot built by hand)."""

    root: Module
    tracer: str = ""
    _modules: Mapping[str, Module] = field(init=False, repr=False, compare=False, hash=False)
    # Set by `core.validate.check_snapshot` once the snapshot passed: it cannot change after.
    _checked: bool = field(init=False, default=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        root: object = self.root
        if not isinstance(root, Module):
            raise TypeError(f"Snapshot takes the root Module, not {type(root).__name__}")
        if not isinstance(self.tracer, str):
            raise TypeError(f"Snapshot's tracer is a string, not {type(self.tracer).__name__}")
        object.__setattr__(self, "_modules", MappingProxyType({m.path: m for m in self.root.walk()}))

    def __reduce__(self) -> tuple[type[Snapshot], tuple[Module, str]]:
        # pickle/deepcopy rebuild the derived table (a mappingproxy cannot be pickled)
        return (Snapshot, (self.root, self.tracer))

    def to_json(self) -> str:
        from core.serialize import snapshot_to_json

        return snapshot_to_json(self)

    @staticmethod
    def from_json(text: str) -> Snapshot:
        from core.serialize import snapshot_from_json

        return snapshot_from_json(text)

    @property
    def origin(self) -> Origin:
        """`"json"` when any of its graphs was read from a JSON file, else `"process"`."""
        for module in self._modules.values():
            if module.graph is not None and module.graph.origin == "json":
                return "json"
        return "process"

    @property
    def modules(self) -> Mapping[str, Module]:
        """Every module by qualified path (the root is `""`)."""
        return self._modules

    def params_under(self, path: str) -> Iterator[tuple[str, Param]]:
        """(qualified name, param) of the module at `path` and everything below it, unordered."""
        for module in self._modules[path].walk(ordered=False):
            for local, param in module.params.items():
                yield join(module.path, local), param

    def param(self, qualified: str) -> Param | None:
        """The parameter with this qualified name, if the snapshot knows it."""
        owner, _, local = qualified.rpartition(".")
        module = self._modules.get(owner)
        return None if module is None else module.params.get(local)
