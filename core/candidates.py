"""Candidate boundaries: the places, each "after module X", where the balancer may cut.

    candidate_cuts(snapshot)                 # the calls of the numbered blocks (automatic)
    candidate_cuts(snapshot, 2)              # every call down to call depth 2
    candidate_cuts(snapshot, ["blocks.0", "blocks.3"])

By default the calls of the children of the numbered module list that holds most of the model
(``blocks.0 .. blocks.N``); or every call down to a call depth (``candidates=2``); or an
explicit list of module paths. Only the snapshot's structure is read: nothing is priced here
(`core.chain` does that) and nothing is chosen (`core.partition`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.cuts import Cut, CutLike, as_cut
from core.errors import BalanceError
from core.graph import Node
from core.snapshot import Module, Snapshot, join

__all__ = ["Candidates", "candidate_cuts"]

Candidates = Sequence[CutLike] | int | None
"""None (numbered module list found automatically), a call depth, or explicit module paths."""


def candidate_cuts(snapshot: Snapshot, candidates: Candidates = None) -> tuple[Cut, ...]:
    """The candidate boundaries: explicit paths, every call down to a depth, or automatic.

    Automatic (``None``): among the traced modules, the calls of sibling modules with numbered
    names (``blocks.0``, ``blocks.1``...; a ModuleList is not called itself, its children are
    called from the parent's graph) form groups. The group whose members hold the most
    parameter bytes wins (the deeper one on a tie); other groups outside it holding at least
    half as much join it (an encoder's and a decoder's blocks). Members called more than once
    are left out, and groups that cannot be cut are skipped. Without any group, every call of
    the root graph is a candidate (``candidates=1``).

    A depth ``d >= 1``: every module call at call depth 1..d (depth 1 = the calls of the root
    graph; depth 2 = also the calls inside traced modules called by the root, and so on), for
    modules called exactly once.
    """
    if candidates is None:
        return _automatic(snapshot)
    if isinstance(candidates, bool) or isinstance(candidates, int):
        if isinstance(candidates, bool) or candidates < 1:
            raise BalanceError(
                f"candidates={candidates!r}: a call depth must be an integer >= 1 "
                "(1 = every call of the root graph)."
            )
        return _down_to_depth(snapshot, candidates, _call_counts(snapshot))
    if isinstance(candidates, str):
        raise TypeError(
            f"candidates={candidates!r}: give a sequence of module paths, not one string "
            f"(did you mean [{candidates!r}]?)."
        )
    if not isinstance(candidates, Sequence):
        raise TypeError(
            f"candidates={candidates!r}: give None, a call depth (int) or a sequence of module paths."
        )
    return tuple(as_cut(c) for c in candidates)


def _call_counts(snapshot: Snapshot) -> dict[str, int]:
    """How many call_module nodes of the traced modules call each module."""
    counts: dict[str, int] = {}
    for module in snapshot.modules.values():
        if module.graph is not None:
            prefix = module.path
            for node in module.graph.nodes:
                if node.op == "call_module":
                    path = f"{prefix}.{node.target}" if prefix else node.target
                    counts[path] = counts.get(path, 0) + 1
    return counts


def _inlinable(module: Module) -> bool:
    return module.graph is not None and not any(
        p.target.startswith("*") for p in module.graph.placeholders
    )


def _down_to_depth(snapshot: Snapshot, depth: int, counts: Mapping[str, int]) -> tuple[Cut, ...]:
    """Every call down to call depth `depth`, a callee's own calls before its call (post-order),
    with an explicit stack: call chains can be thousands of modules deep."""
    out: list[Cut] = []
    modules = snapshot.modules
    if snapshot.root.graph is None:
        return ()
    # (module whose graph is scanned, its call depth, next node index, the call to emit on resume)
    stack: list[tuple[Module, int, int, str | None]] = [(snapshot.root, 1, 0, None)]
    while stack:
        owner, level, index, resumed = stack.pop()
        if resumed is not None:
            out.append(Cut(resumed))  # the callee's calls are out: now the call itself
        assert owner.graph is not None
        nodes = owner.graph.nodes
        while index < len(nodes):
            node = nodes[index]
            index += 1
            if node.op != "call_module":
                continue
            path = join(owner.path, node.target)
            if counts.get(path, 0) != 1 or path not in modules:
                continue  # a module called twice cannot be cut, at or inside it
            callee = modules[path]
            if level < depth and _inlinable(callee):
                stack.append((owner, level, index, path))
                stack.append((callee, level + 1, 0, None))
                break
            out.append(Cut(path))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Group:
    container: str
    members: tuple[str, ...]
    weight: int
    order: int
    member_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "member_set", frozenset(self.members))

    def holds(self, path: str) -> bool:
        """Is `path` one of the members or below one? (O(depth of path))"""
        parts = path.split(".")
        return any(".".join(parts[:i]) in self.member_set for i in range(1, len(parts) + 1))


def _automatic(snapshot: Snapshot) -> tuple[Cut, ...]:
    counts = _call_counts(snapshot)
    calls, caller = _calls_in_execution_order(snapshot)
    found: dict[tuple[str, str], list[str]] = {}
    modules = snapshot.modules
    for owner, node in calls:
        prefix, _, last = node.target.rpartition(".")
        if not last.isdigit():
            continue
        path = join(owner, node.target)
        if counts[path] == 1 and path in modules:
            found.setdefault((owner, join(owner, prefix)), []).append(path)
    listed = [
        (order, container, unique)
        for order, ((owner, container), members) in enumerate(found.items())
        for unique in [tuple(dict.fromkeys(members))]
        # too small, or its caller cannot be inlined up to the root: not a candidate list
        if len(unique) >= 2 and _reaches_root(snapshot, owner, counts, caller)
    ]
    if len(listed) == 1:  # nothing to compare: skip weighing
        return tuple(Cut(m) for m in listed[0][2])
    any_params = any(module.params for module in snapshot.modules.values())
    groups = []
    for order, container, unique in listed:
        if any_params:
            keys: dict[str, int] = {}
            for member in unique:
                keys.update(_param_bytes(snapshot.modules[member]))
            weight = sum(keys.values())
        else:
            weight = len(unique)
        groups.append(_Group(container, unique, weight, order))
    groups.sort(key=lambda g: (-g.weight, -_depth(g.container), -len(g.members), g.order))
    chosen: list[_Group] = []
    for group in groups:
        if chosen and 2 * group.weight < chosen[0].weight:
            break
        if any(c.holds(group.container) or group.holds(c.container) for c in chosen):
            continue
        chosen.append(group)
    if not chosen:
        return _down_to_depth(snapshot, 1, counts)
    return tuple(Cut(m) for g in sorted(chosen, key=lambda g: g.order) for m in g.members)


def _reaches_root(
    snapshot: Snapshot, owner: str, counts: Mapping[str, int], caller: Mapping[str, str]
) -> bool:
    """Can `owner` be inlined up to the root (each module on the way called once, inlinable)?"""
    path = owner
    while path:
        if counts.get(path, 0) != 1 or path not in caller or not _inlinable(snapshot.modules[path]):
            return False
        path = caller[path]
    return True


def _param_bytes(module: Module) -> dict[str, int]:
    """Storage key -> bytes of the parameters (not buffers) of `module` and below."""
    out: dict[str, int] = {}
    stack = [module]
    while stack:
        here = stack.pop()
        for param in here.params.values():
            if not param.buffer:
                out[param.key] = param.nbytes
        if here.children:
            stack.extend(here.children.values())
    return out


def _calls_in_execution_order(snapshot: Snapshot) -> tuple[list[tuple[str, Node]], dict[str, str]]:
    """(caller path, call_module node) of every traced module reached from the root, in the
    order the calls run (a callee's own calls come right after its call), and the caller of
    every module called (the first, for a module called more than once)."""
    out: list[tuple[str, Node]] = []
    caller: dict[str, str] = {}
    stack: list[tuple[Module, int]] = []
    if snapshot.root.graph is not None:
        stack.append((snapshot.root, 0))
    modules = snapshot.modules
    while stack:  # an explicit stack: module trees can be deep
        owner, index = stack.pop()
        assert owner.graph is not None
        nodes = owner.graph.nodes
        owner_path = owner.path
        size = len(nodes)
        while index < size:
            node = nodes[index]
            index += 1
            if node.op != "call_module":
                continue
            out.append((owner_path, node))
            path = f"{owner_path}.{node.target}" if owner_path else node.target  # join()
            callee = modules.get(path)
            if path in caller or callee is None:
                continue
            caller[path] = owner.path
            if callee.graph is not None:
                stack.append((owner, index))
                stack.append((callee, 0))
                break
    return out, caller


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0
