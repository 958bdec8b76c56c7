"""Reference semantics, oracles and hypothesis strategies for the core's tests. No torch.

Everything here is written from the design brief, independently of the core's passes:

- `Evaluator` runs a snapshot (or a plan's chain of stage graphs) symbolically. A leaf
  module, a function or a method returns a fresh `Term` (op, qualified target, evaluated
  arguments); a traced module runs its own graph; `getitem` on a real tuple/list/dict picks
  the item; `get_attr` is a `("param", qualified name)` term. Terms are hash-consed, so
  equal terms are the same object and comparing big DAG-shaped results stays cheap.
- `expected_stages` flattens the call tree along the spine into a list of events and
  cuts it at the requested boundaries: which compute nodes, modules and parameters each
  stage must hold, or which `PlanError` subclass the cut set must raise.
- `cases()` / `cut_sets()` generate random snapshots (nested traced modules, leaves,
  containers, tuple/dict returns, defaults, kwargs, tied parameters, constants) and cut sets.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from core.builder import GraphBuilder, module
from core.cuts import Cut
from core.errors import (
    CalledMoreThanOnce,
    CutAtRoot,
    CutInsideLeaf,
    DuplicateCut,
    EmptyStage,
    NotCalled,
    PlanError,
    UnknownPath,
)
from core.graph import Arg, DictOf, Graph, ListOf, Node, Opaque, Ref, SliceOf, ValueInfo
from core.snapshot import Module, Param, Snapshot

# fx adapter naming (documented in core/rules.py): `f"{fn.__module__}.{fn.__qualname__}"`.
GETITEM = "_operator.getitem"
GETATTR = "builtins.getattr"
PROJECTIONS = frozenset({("call_function", GETITEM), ("call_function", GETATTR), ("call_method", "get")})


def qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def is_compute(node: Node) -> bool:
    return node.op in ("call_module", "call_function", "call_method") and (node.op, node.target) not in PROJECTIONS


def ref_names(arg: Any) -> list[str]:
    """Names referenced in an argument tree (written here, not taken from core.graph)."""
    if isinstance(arg, Ref):
        return [arg.name]
    if isinstance(arg, tuple):
        return [n for a in arg for n in ref_names(a)]
    if isinstance(arg, ListOf):
        return [n for a in arg.items for n in ref_names(a)]
    if isinstance(arg, DictOf):
        return [n for k, v in arg.items for n in ref_names(k) + ref_names(v)]
    if isinstance(arg, SliceOf):
        return ref_names(arg.start) + ref_names(arg.stop) + ref_names(arg.step)
    return []


def node_reads(node: Node) -> list[str]:
    return [n for a in node.args for n in ref_names(a)] + [n for v in node.kwargs.values() for n in ref_names(v)]


# -- symbolic values -------------------------------------------------------------------------


class Term:
    """An opaque computed value; build only through `Evaluator.term` (hash-consed)."""

    __slots__ = ("op", "target", "args", "kwargs")

    def __init__(self, op: str, target: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]):
        self.op, self.target, self.args, self.kwargs = op, target, args, kwargs

    def __repr__(self) -> str:
        return f"Term({self.op}, {self.target})"


@dataclass(frozen=True)
class ListV:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class DictV:
    items: tuple[tuple[Any, Any], ...]

    def lookup(self, key: Any) -> tuple[bool, Any]:
        found, value = False, None
        for k, v in self.items:  # the last duplicate wins, as in a dict literal
            if canon(k) == canon(key):
                found, value = True, v
        return found, value


@dataclass(frozen=True)
class SliceV:
    start: Any
    stop: Any
    step: Any


class EvalError(Exception):
    """The reference itself could not evaluate (a malformed graph or a binding error)."""


def canon(value: Any) -> Any:
    """A hashable, type-tagged form: 1, 1.0 and True stay apart; terms compare by identity."""
    if isinstance(value, Term):
        return value
    if isinstance(value, tuple):
        return ("tuple",) + tuple(canon(v) for v in value)
    if isinstance(value, ListV):
        return ("list",) + tuple(canon(v) for v in value.items)
    if isinstance(value, DictV):
        return ("dict",) + tuple((canon(k), canon(v)) for k, v in value.items)
    if isinstance(value, SliceV):
        return ("slice", canon(value.start), canon(value.stop), canon(value.step))
    if isinstance(value, Opaque):
        return ("opaque", value.token)
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


class Evaluator:
    """Symbolic interpreter of a snapshot's graphs; one instance per comparison (shared terms)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.modules = snapshot.modules
        self._terms: dict[Any, Term] = {}

    def term(self, op: str, target: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Term:
        kw = tuple(sorted(kwargs.items()))
        key = (op, target, canon(args), tuple((k, canon(v)) for k, v in kw))
        found = self._terms.get(key)
        if found is None:
            found = self._terms[key] = Term(op, target, args, kw)
        return found

    def run_model(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        root = self.modules[""]
        assert root.graph is not None
        return self.run_graph("", root.graph, tuple(args), dict(kwargs))

    def run_plan(self, plan: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Stage 0 gets the model inputs; each stage's output tuple feeds the next stage."""
        value = self.run_graph("", plan.stages[0].graph, tuple(args), dict(kwargs))
        for stage in plan.stages[1:]:
            if not isinstance(value, tuple):
                raise EvalError(f"stage {stage.index - 1} does not send a tuple: {value!r}")
            value = self.run_graph("", stage.graph, value, {})
        return value

    def run_graph(self, path: str, graph: Graph, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        env: dict[str, Any] = {}
        position = 0
        unused = dict(kwargs)
        for node in graph.nodes:
            if node.op == "placeholder":
                if position < len(args):
                    if node.target in kwargs:
                        raise EvalError(f"{path}: {node.target} given twice")
                    env[node.name] = args[position]
                elif node.target in unused:
                    env[node.name] = unused.pop(node.target)
                elif node.args:
                    env[node.name] = self.value(node.args[0], env)
                else:
                    raise EvalError(f"{path}: no value for {node.target}")
                position += 1
            elif node.op == "output":
                if position < len(args) or unused:
                    raise EvalError(f"{path}: too many arguments ({len(args)}, {sorted(unused)})")
                return self.value(node.args[0], env)
            else:
                env[node.name] = self.node(path, node, env)
        raise EvalError(f"{path}: graph has no output")

    def value(self, arg: Arg, env: Mapping[str, Any]) -> Any:
        if isinstance(arg, Ref):
            if arg.name not in env:
                raise EvalError(f"undefined {arg.name}")
            return env[arg.name]
        if isinstance(arg, tuple):
            return tuple(self.value(a, env) for a in arg)
        if isinstance(arg, ListOf):
            return ListV(tuple(self.value(a, env) for a in arg.items))
        if isinstance(arg, DictOf):
            return DictV(tuple((self.value(k, env), self.value(v, env)) for k, v in arg.items))
        if isinstance(arg, SliceOf):
            return SliceV(self.value(arg.start, env), self.value(arg.stop, env), self.value(arg.step, env))
        return arg

    def node(self, path: str, node: Node, env: Mapping[str, Any]) -> Any:
        args = tuple(self.value(a, env) for a in node.args)
        kwargs = {k: self.value(v, env) for k, v in node.kwargs.items()}
        if node.op == "get_attr":
            return self.term("param", qualify(path, node.target), (), {})
        if node.op == "call_module":
            qualified = qualify(path, node.target)
            callee = self.modules[qualified]
            if callee.graph is not None:
                return self.run_graph(qualified, callee.graph, args, kwargs)
            return self.term("call_module", qualified, args, kwargs)
        if node.op == "call_function" and node.target == GETITEM and len(args) == 2 and not kwargs:
            container, key = args
            if isinstance(container, (tuple, ListV)) and type(key) is int:
                items = container if isinstance(container, tuple) else container.items
                if not -len(items) <= key < len(items):
                    raise EvalError(f"index {key} out of range")
                return items[key]
            if isinstance(container, DictV) and not isinstance(key, Term):
                found, value = container.lookup(key)
                if not found:
                    raise EvalError(f"missing key {key!r}")
                return value
        if node.op == "call_method" and node.target == "get" and args and isinstance(args[0], DictV):
            if len(args) in (2, 3) and not kwargs and not isinstance(args[1], Term):
                found, value = args[0].lookup(args[1])
                return value if found else (args[2] if len(args) == 3 else None)
        return self.term(node.op, node.target, args, kwargs)


def same(a: Any, b: Any) -> bool:
    return bool(canon(a) == canon(b))


# -- the spine oracle ------------------------------------------------------------------------


_CALLERS: dict[int, tuple[Snapshot, dict[str, list[str]]]] = {}


def callers(snapshot: Snapshot) -> dict[str, list[str]]:
    """Module path -> the path of the traced module whose graph calls it, once per call."""
    cached = _CALLERS.get(id(snapshot))
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    out: dict[str, list[str]] = {}
    for path, mod in snapshot.modules.items():
        if mod.graph is not None:
            for node in mod.graph.nodes:
                if node.op == "call_module":
                    out.setdefault(qualify(path, node.target), []).append(path)
    if len(_CALLERS) > 8:
        _CALLERS.clear()
    _CALLERS[id(snapshot)] = (snapshot, out)  # keeps the snapshot alive, so the id stays its own
    return out


def chain(calls: Mapping[str, list[str]], path: str) -> list[str]:
    """`path` and the modules calling it up to (excluding) the root; stops where not unique."""
    out = []
    while path:
        out.append(path)
        found = calls.get(path, [])
        if len(found) != 1:
            break
        path = found[0]
    return out


def valid_cut_path(snapshot: Snapshot, path: str) -> bool:
    if not path or path not in snapshot.modules:
        return False
    calls = callers(snapshot)
    return all(len(calls.get(p, [])) == 1 for p in chain(calls, path))


def errors_for_path(snapshot: Snapshot, path: str) -> set[type[PlanError]]:
    """The errors a single cut at `path` may raise (empty if it is a valid cut point)."""
    if not path:
        return {CutAtRoot}
    if path not in snapshot.modules:
        return {UnknownPath}
    calls = callers(snapshot)
    for p in chain(calls, path):
        count = len(calls.get(p, []))
        if count > 1:
            return {CalledMoreThanOnce}
        if count == 0:
            return {NotCalled, CutInsideLeaf}
    return set()


@dataclass
class StageExpectation:
    computes: list[tuple[str, str]] = field(default_factory=list)  # (op, qualified target)
    modules: list[str] = field(default_factory=list)
    params: set[str] = field(default_factory=set)


def _as_cut(cut: Cut | str) -> Cut:
    if isinstance(cut, Cut):
        return cut
    side, sep, rest = cut.partition(":")
    if sep and side == "before":
        return Cut(rest, "before")
    if sep and side == "after":
        return Cut(rest, "after")
    return Cut(cut, "after")


def params_under(snapshot: Snapshot, path: str) -> set[str]:
    out: set[str] = set()
    for qualified_path, mod in snapshot.modules.items():
        if qualified_path == path or qualified_path.startswith(path + ".") or not path:
            out.update(qualify(qualified_path, name) for name in mod.params)
    return out


def expected_stages(
    snapshot: Snapshot, cuts: Sequence[Cut | str]
) -> list[StageExpectation] | set[type[PlanError]]:
    """What each stage must hold, or the set of errors of which one must be raised."""
    parsed = [_as_cut(c) for c in cuts]
    if len(set(parsed)) != len(parsed):
        return {DuplicateCut}
    errors: set[type[PlanError]] = set()
    for cut in parsed:
        errors |= errors_for_path(snapshot, cut.path)
    if errors:
        return errors
    calls = callers(snapshot)
    inline = {p for cut in parsed for p in chain(calls, cut.path)[1:]}
    events: list[tuple[str, Any]] = []
    _walk(snapshot, "", inline, events)
    marks = []
    for cut in parsed:
        marks.append(events.index(("start" if cut.side == "before" else "end", cut.path)))
    marks.sort()
    stages = [StageExpectation() for _ in range(len(parsed) + 1)]
    for i, (kind, what) in enumerate(events):
        if kind != "compute":
            continue
        stage = stages[sum(1 for m in marks if m < i)]
        op, target, reads = what
        stage.computes.append((op, target))
        if op == "call_module":
            stage.modules.append(target)
            stage.params |= params_under(snapshot, target)
        stage.params |= reads
    if any(not s.computes for s in stages) and len(stages) > 1:
        return {EmptyStage}
    return stages


def _walk(snapshot: Snapshot, path: str, inline: set[str], out: list[tuple[str, Any]]) -> None:
    graph = snapshot.modules[path].graph
    assert graph is not None
    for node in graph.nodes:
        params = {
            qualify(path, graph.node(n).target) for n in node_reads(node) if graph.node(n).op == "get_attr"
        }
        params = {p for p in params if snapshot.param(p) is not None}
        if node.op == "call_module":
            callee = qualify(path, node.target)
            out.append(("start", callee))
            if callee in inline:
                _walk(snapshot, callee, inline, out)
            else:
                out.append(("compute", ("call_module", callee, params)))
            out.append(("end", callee))
        elif is_compute(node):
            out.append(("compute", (node.op, node.target, params)))


def expected_ties(snapshot: Snapshot, stages: Sequence[StageExpectation]) -> set[frozenset[tuple[str, int]]]:
    by_key: dict[str, set[tuple[str, int]]] = {}
    for index, stage in enumerate(stages):
        for name in stage.params:
            param = snapshot.param(name)
            assert param is not None
            if not param.buffer:
                by_key.setdefault(param.key, set()).add((name, index))
    if len(stages) > 1:
        return {frozenset(m) for m in by_key.values() if len({s for _, s in m}) > 1}
    return {frozenset(m) for m in by_key.values() if len(m) > 1}


# -- strategies ------------------------------------------------------------------------------
#
# Hypothesis draws the seed and the size knobs (so failures shrink toward small models); the
# details come from a seeded `random.Random`, which is ~100x cheaper than one draw per decision.

TIE_KEYS = ("shared.0", "shared.1")


@dataclass(frozen=True)
class Sig:
    """How a generated module is called and what it returns."""

    params: tuple[tuple[str, bool], ...] | None  # (name, has default); None: a leaf, anything goes
    ret: tuple[Any, ...]  # ("one",) | ("tuple", n) | ("dict", keys)


@dataclass(frozen=True)
class Case:
    snapshot: Snapshot
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]

    def __repr__(self) -> str:  # what hypothesis prints on failure: enough to rebuild it
        return f"Case(args={self.args!r}, kwargs={dict(self.kwargs)!r}, json={self.snapshot.to_json()!r})"


@dataclass(frozen=True)
class Knobs:
    max_depth: int  # traced modules nest this deep below the root
    max_children: int
    max_ops: int  # plain function/method nodes between two module calls
    info_mode: str  # "all" | "some" | "none": value info on nodes


class _Gen:
    def __init__(self, rng: random.Random, knobs: Knobs) -> None:
        self.rng = rng
        self.k = knobs

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def constant(self) -> Arg:
        rng = self.rng
        kind = rng.randrange(7)
        if kind == 0:
            return rng.randint(-5, 5)
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return None
        if kind == 3:
            return rng.choice(["mean", "", "ref", "x.y"])
        if kind == 4:
            return rng.choice([0.5, -0.0, 1e-300, 3.25e12, float("inf"), float("-inf")])
        if kind == 5:
            return rng.choice([Opaque("dtype:torch.float16"), Opaque("device:cpu")])
        return SliceOf(None, rng.randint(0, 4), None)

    def info(self) -> ValueInfo | None:
        if self.k.info_mode == "none" or (self.k.info_mode == "some" and self.chance(0.5)):
            return None
        return ValueInfo("tensor", (2, 4), "float32", self.rng.randint(1, 4096))

    def params(self, path: str, names: Iterable[str]) -> dict[str, Param]:
        out = {}
        for name in names:
            if self.chance(0.5):
                continue
            tied = self.chance(0.3)
            key = self.rng.choice(TIE_KEYS) if tied else f"own:{qualify(path, name)}"
            numel = 4 if tied else self.rng.randint(1, 100)
            buffer = not tied and self.chance(0.15)
            out[name] = Param(key, numel, numel * 4, buffer)
        return out

    def leaf(self, path: str) -> tuple[Module, Sig]:
        inner = {}
        if self.chance(0.5):
            inner["inner"] = module(qualify(path, "inner"), params=self.params(qualify(path, "inner"), ["w"]))
        reason = self.rng.choice([None, "data-dependent control flow"])
        ret = self.rng.choice([("one",), ("one",), ("tuple", 2), ("tuple", 3)])
        return (
            module(path, None, inner, self.params(path, ["weight", "bias"]), "Leaf", leaf_reason=reason),
            Sig(None, ret),
        )

    def traced(self, path: str, depth: int) -> tuple[Module, Sig]:
        rng = self.rng
        root = depth == 0
        children: dict[str, Module] = {}
        callables: list[tuple[str, Module, Sig]] = []  # (target relative to this module, ...)
        deeper = depth < self.k.max_depth
        for i in range(rng.randint(2 if root else 0, self.k.max_children)):
            name = f"m{i}"
            kind = rng.choice(["leaf", "traced", "list"] if deeper else ["leaf"])
            if kind == "list":  # a ModuleList: not called itself, its items are
                items: dict[str, Module] = {}
                for j in range(rng.randint(1, 3)):
                    item_path = qualify(path, f"{name}.{j}")
                    mod, sig = self.leaf(item_path) if self.chance(0.5) else self.traced(item_path, depth + 1)
                    items[str(j)] = mod
                    callables.append((f"{name}.{j}", mod, sig))
                children[name] = module(qualify(path, name), None, items, type_name="ModuleList")
            else:
                child_path = qualify(path, name)
                mod, sig = self.leaf(child_path) if kind == "leaf" else self.traced(child_path, depth + 1)
                children[name] = mod
                callables.append((name, mod, sig))
        params = self.params(path, ["w", "scale"])

        g = GraphBuilder()
        sig_params: list[tuple[str, bool]] = []
        avail: list[Arg] = []
        attrs: list[Ref] = []
        for j in range(rng.randint(1, 3 if root else 2)):
            sig_params.append((f"x{j}", False))
            avail.append(g.placeholder(f"x{j}", info=self.info()))
        for j in range(rng.randint(0, 2)):
            sig_params.append((f"d{j}", True))
            avail.append(g.placeholder(f"d{j}", self.constant(), info=self.info()))

        rng.shuffle(callables)
        calls: list[tuple[str, Module, Sig]] = []
        for item in callables:
            calls.extend([item] * rng.choice([1] * 10 + [0, 2]))  # rarely uncalled or called twice
        for target, _, sig in calls:
            for _ in range(rng.randint(0, self.k.max_ops)):
                self.op(g, avail, attrs, params, children)
            self.call(g, avail, target, sig)
        for _ in range(rng.randint(0 if calls else 1, max(1, self.k.max_ops))):
            self.op(g, avail, attrs, params, children)

        shape = rng.choice(["one", "one", "tuple", "dict"])
        if shape == "one":
            graph = g.output(self.pick(avail))
            ret: tuple[Any, ...] = ("one",)
        elif shape == "tuple":
            n = rng.randint(1, 3)
            graph = g.output(tuple(self.pick(avail) for _ in range(n)))
            ret = ("tuple", n)
        else:
            keys = tuple(rng.sample(["a", "b", "c"], rng.randint(1, 3)))
            graph = g.output(DictOf(tuple((k, self.pick(avail)) for k in keys)))
            ret = ("dict", keys)
        return module(path, graph, children, params, "Traced"), Sig(tuple(sig_params), ret)

    def pick(self, avail: list[Arg]) -> Arg:
        """Mostly recent values (long chains), sometimes any earlier one (skip connections)."""
        if self.chance(0.4):
            return avail[-1]
        return self.rng.choice(avail)

    def op(
        self,
        g: GraphBuilder,
        avail: list[Arg],
        attrs: list[Ref],
        params: Mapping[str, Param],
        children: Mapping[str, Module],
    ) -> None:
        rng = self.rng
        kind = rng.choice(["add", "relu", "param", "cat", "const", "tuple_fn"])
        if kind == "add":
            avail.append(g.call_function("torch.add", self.pick(avail), self.pick(avail), info=self.info()))
        elif kind == "relu":
            avail.append(g.call_method("relu", self.pick(avail), info=self.info()))
        elif kind == "param":
            if attrs and self.chance(0.4):
                attr = rng.choice(attrs)  # one parameter read, used again (maybe in a later stage)
            else:
                names = list(params) + [f"{c}.{p}" for c, m in children.items() if m.graph is None for p in m.params]
                if not names:
                    names = ["missing_attr"]  # a get_attr the snapshot has no Param for
                attr = g.get_attr(rng.choice(sorted(names)))
                attrs.append(attr)
            avail.append(g.call_function("torch.mul", self.pick(avail), attr, info=self.info()))
        elif kind == "cat":
            items = (self.pick(avail), self.pick(avail))
            seq: Arg = ListOf(items) if self.chance(0.5) else items
            avail.append(g.call_function("torch.cat", seq, dim=rng.randint(-1, 1), info=self.info()))
        elif kind == "const":
            avail.append(
                g.call_function("torch.clamp", self.pick(avail), self.constant(), info=self.info(), extra=self.constant())
            )
        else:  # a function returning a tuple, read with getitem (negative indices too)
            out = g.call_function("torch.split", self.pick(avail), 2, info=None)
            for i in rng.sample([-2, -1, 0, 1], rng.randint(1, 2)):
                avail.append(g.getitem(out, i, info=self.info()))

    def call(self, g: GraphBuilder, avail: list[Arg], target: str, sig: Sig) -> None:
        rng = self.rng
        kwargs: dict[str, Arg] = {}
        if sig.params is None:
            args = tuple(self.pick(avail) for _ in range(rng.randint(1, 2)))
            if self.chance(0.5):
                kwargs["scale"] = self.constant()
        else:  # some parameters by position, the rest by name or left to their defaults
            positional = rng.randint(0, len(sig.params))
            args = tuple(
                self.pick(avail) if not default or self.chance(0.5) else self.constant()
                for _, default in sig.params[:positional]
            )
            for name, default in sig.params[positional:]:
                if not default or self.chance(0.5):
                    kwargs[name] = self.pick(avail)
        result = g.call_module(target, *args, info=self.info() if sig.ret == ("one",) else None, **kwargs)
        if sig.ret[0] == "one":
            avail.append(result)
            return
        picks: list[Any]
        if sig.ret[0] == "tuple":
            n = sig.ret[1]
            picks = rng.sample(range(-n, n), rng.randint(0, n))
            for i in picks:
                avail.append(g.getitem(result, i, info=self.info()))
        else:
            keys = sig.ret[1]
            picks = rng.sample(keys, rng.randint(0, len(keys)))
            for key in picks:
                if self.chance(0.5):
                    avail.append(g.getitem(result, key, info=self.info()))
                else:
                    extra: tuple[Arg, ...] = (self.pick(avail),) if self.chance(0.5) else ()
                    avail.append(g.call_method("get", result, key, *extra, info=self.info()))
            if self.chance(0.3):
                avail.append(g.call_method("get", result, "zz", self.pick(avail), info=self.info()))
        if not picks or self.chance(0.2):
            avail.append(result)  # the whole tuple/dict used as one value


@st.composite
def cases(draw: Any) -> Case:
    """A random snapshot (see `_Gen`) and the model inputs to run it with."""
    knobs = Knobs(
        max_depth=draw(st.integers(0, 3)),
        max_children=draw(st.integers(2, 3)),
        max_ops=draw(st.integers(0, 3)),
        info_mode=draw(st.sampled_from(["all", "some", "none"])),
    )
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    root, sig = _Gen(rng, knobs).traced("", 0)
    assert sig.params is not None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    positional = rng.randint(0, len(sig.params))
    for i, (name, default) in enumerate(sig.params):
        if default and rng.random() < 0.5:
            continue  # left to its default
        value = Term("input", name, (), ())
        if i < positional and len(args) == i:
            args.append(value)
        else:
            kwargs[name] = value
    return Case(Snapshot(root), tuple(args), kwargs)


@st.composite
def cut_sets(draw: Any, snapshot: Snapshot, invalid: bool = True, plannable: bool = False) -> list[Cut | str]:
    """Cut sets at valid cut points (a module called exactly once along its chain), either side.

    `invalid`: sometimes add a bad cut (the root, an unknown path, a duplicate, a module inside a
    leaf, a container, one called twice). `plannable`: keep only cuts that leave every stage
    some compute, according to `expected_stages` (so every example yields a plan).
    """
    valid = sorted(p for p in snapshot.modules if valid_cut_path(snapshot, p))
    paths = [p for p in valid for _ in range(1 + p.count("."))]  # deeper cuts more often
    unpartitioned = draw(st.sampled_from([False] * 9 + [True]))
    chosen: list[str] = []
    if paths and not unpartitioned:
        picks = [draw(st.sampled_from(paths)) for _ in range(draw(st.integers(1, 4)))]
        chosen = list(dict.fromkeys(picks))
    out: list[Cut | str] = []
    for path in chosen:
        side = draw(st.sampled_from(["after", "before"]))
        form = draw(st.sampled_from(["cut", "str", "bare"]))
        cut: Cut | str = Cut(path, side) if form == "cut" else f"{side}:{path}"
        if form == "bare" and side == "after":
            cut = path
        if plannable and isinstance(expected_stages(snapshot, out + [cut]), set):
            continue  # it would leave a stage without compute
        out.append(cut)
    if invalid and not plannable and draw(st.sampled_from([False] * 9 + [True])):
        bad = sorted(p for p in snapshot.modules if p and not valid_cut_path(snapshot, p))
        options = ["", "no.such.module"] + bad + (["<duplicate>"] if out else [])
        extra = draw(st.sampled_from(options))
        if extra == "<duplicate>":  # the same cut again, in the other spelling
            first = _as_cut(out[0]) if isinstance(out[0], str) else out[0]
            out.append(first if isinstance(out[0], str) else str(first))
        else:
            out.insert(draw(st.integers(0, len(out))), extra)
    return out
