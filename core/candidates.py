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

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from core.chain_fast import instances
from core.cuts import Cut, CutLike, as_cut
from core.errors import BalanceError
from core.graph import Node
from core.snapshot import Module, Snapshot, join

__all__ = ["Candidates", "RootCalls", "candidate_calls", "candidate_cuts"]

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
    return candidate_calls(snapshot, candidates)[0]


@dataclass(frozen=True, slots=True)
class RootCalls:
    """Automatic candidates that are all calls made by the root graph of modules called once in
    the whole snapshot, below untraced containers (`containers`, the candidates' parents) that
    no graph calls: `index[k]` is the position in the root graph of the call of candidate k.
    These are the conditions of `core.chain_fast.root_level_flat`, met by construction, so
    `core.chain_fast.root_calls_flat` places the candidates without checking them again."""

    index: tuple[int, ...]
    containers: frozenset[str]


def candidate_calls(
    snapshot: Snapshot, candidates: Candidates = None
) -> tuple[tuple[Cut, ...], RootCalls | None]:
    """`candidate_cuts`, and for automatic candidates that the root graph calls, where it calls
    them (`RootCalls`; None otherwise)."""
    if candidates is None:
        return _automatic(snapshot)
    return _given(snapshot, candidates), None


def _given(snapshot: Snapshot, candidates: Sequence[CutLike] | int) -> tuple[Cut, ...]:
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


def _call_counts(snapshot: Snapshot) -> Counter[str]:
    """How many call_module nodes of the traced modules call each module."""
    paths: list[str] = []
    for module in snapshot.modules.values():
        if module.graph is not None:
            targets = [node.target for node in module.graph.nodes if node.op == "call_module"]
            prefix = module.path
            paths.extend([f"{prefix}.{t}" for t in targets] if prefix else targets)
    return Counter(paths)


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


def _automatic(snapshot: Snapshot) -> tuple[tuple[Cut, ...], RootCalls | None]:
    counts = _call_counts(snapshot)
    found, caller = _numbered_calls(snapshot, counts)
    listed = [
        (order, owner, container, members)
        for order, ((owner, container), members) in enumerate(found.items())
        # too small, or its caller cannot be inlined up to the root: not a candidate list
        if len(members[0]) >= 2 and _reaches_root(snapshot, owner, counts, caller)
    ]
    if len(listed) == 1:  # nothing to compare: skip weighing
        _, owner, container, members = listed[0]
        return _chosen(snapshot, [(owner, container, members)], counts)
    any_params = any(module.params for module in snapshot.modules.values())
    groups = []
    for order, owner, container, members in listed:
        unique = tuple(members[0])  # no repeats: each member has a single call
        if any_params:
            keys: dict[str, int] = {}
            for member in unique:
                keys.update(_param_bytes(snapshot.modules[member]))
            weight = sum(keys.values())
        else:
            weight = len(unique)
        groups.append((_Group(container, unique, weight, order), owner, members))
    groups.sort(key=lambda g: (-g[0].weight, -_depth(g[0].container), -len(g[0].members), g[0].order))
    chosen: list[tuple[_Group, str, _Members]] = []
    for entry in groups:
        group = entry[0]
        if chosen and 2 * group.weight < chosen[0][0].weight:
            break
        if any(c.holds(group.container) or group.holds(c.container) for c, _, _ in chosen):
            continue
        chosen.append(entry)
    if not chosen:
        return _down_to_depth(snapshot, 1, counts), None
    chosen.sort(key=lambda entry: entry[0].order)
    return _chosen(snapshot, [(owner, group.container, members) for group, owner, members in chosen], counts)


def _chosen(
    snapshot: Snapshot, groups: list[tuple[str, str, _Members]], counts: Mapping[str, int]
) -> tuple[tuple[Cut, ...], RootCalls | None]:
    """The cuts after the members of `groups` (caller, container, members), group by group, and
    their `RootCalls` when the root graph makes every call and nothing else could: every
    container and the modules above it are untraced and called by no graph."""
    paths = [path for _, _, members in groups for path in members[0]]
    cuts = tuple(instances(Cut, len(paths), path=paths, side=repeat("after"), call=repeat(None)))
    if any(owner for owner, _, _ in groups):
        return cuts, None
    modules = snapshot.modules
    containers = frozenset(container for _, container, _ in groups)
    # root_level_flat asks that the root not call them; no graph at all is the same here: a
    # graph that calls a module is a module above it, so it would be a traced one above too.
    for container in containers:
        above = container
        while above:
            module = modules.get(above)
            if module is None or module.graph is not None or counts.get(above, 0):
                return cuts, None
            above = above.rpartition(".")[0]
    return cuts, RootCalls(tuple(i for _, _, members in groups for i in members[1]), containers)


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


_Members = tuple[list[str], list[int]]
"""The numbered modules of one group: their paths, and where the caller's graph calls each."""


def _numbered_calls(
    snapshot: Snapshot, counts: Mapping[str, int]
) -> tuple[dict[tuple[str, str], _Members], dict[str, str]]:
    """The calls of numbered modules (``blocks.3``) called exactly once, grouped by (caller path,
    container path) with the groups and their members in the order the calls run (a callee's own
    calls come right after its call; a member has one call, so it is listed once), and the caller
    of every traced module called (the first, for a module called more than once). One walk over
    the traced modules reached from the root."""
    found: dict[tuple[str, str], _Members] = {}
    caller: dict[str, str] = {}
    modules = snapshot.modules
    repeated = set()  # modules called more than once: usually none
    if len(counts) < sum(counts.values()):
        repeated = {path for path, count in counts.items() if count > 1}
    # (module whose graph is walked, next node index, its groups by container name)
    stack: list[tuple[Module, int, dict[str, _Members]]] = []
    if snapshot.root.graph is not None:
        stack.append((snapshot.root, 0, {}))
    get = modules.get
    while stack:  # an explicit stack: module trees can be deep
        owner, start, groups = stack.pop()
        assert owner.graph is not None
        nodes = owner.graph.nodes
        owner_path = owner.path
        prefix = f"{owner_path}." if owner_path else ""
        for index in range(start, len(nodes)):
            node = nodes[index]
            if node.op != "call_module":
                continue
            target = node.target
            path = prefix + target  # join()
            callee = get(path)
            if callee is None:
                continue
            head, _, last = target.rpartition(".")
            if last.isdigit() and path not in repeated:
                members = groups.get(head)
                if members is None:
                    members = groups[head] = found.setdefault((owner_path, join(owner_path, head)), ([], []))
                members[0].append(path)
                members[1].append(index)
            # Only traced modules are callers (of the calls in their graphs), so only they are
            # recorded; each is walked once, at its first call.
            if callee.graph is not None and path not in caller:
                caller[path] = owner_path
                stack.append((owner, index + 1, groups))
                stack.append((callee, 0, {}))
                break
    return found, caller


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0
