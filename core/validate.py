"""Pass 1: check the snapshot and the cuts; find the spine of modules to inline.

`check_snapshot` and `check_plan` are the one semantic check of both data types, whether built in
Python or read from JSON (`core.serialize` calls them after reading, and turns the location of a
problem into the JSON path of the bad field). Every traversal here is iterative, so module trees
thousands of levels deep are checked without touching Python's recursion limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast

from pyrsistent import PMap, pmap

from core.cuts import Cut, CutLike, as_cut
from core.errors import (
    CalledMoreThanOnce,
    CutAtRoot,
    CutError,
    CutInsideLeaf,
    DuplicateCut,
    MalformedPlan,
    MalformedSnapshot,
    NotCalled,
    UnknownPath,
    UnsupportedGraph,
)
from core.graph import EMPTY_KWARGS, MAX_ARG_DEPTH, OPS, DictOf, Graph, ListOf, Node, Ref, SliceOf, ValueInfo, arg_depth, refs
from core.snapshot import Module, Param, Snapshot, join

if TYPE_CHECKING:
    from core.plan import Plan

MAX_COUNT = 2**63 - 1
"""The largest size or count a snapshot or plan may hold (element counts, bytes, dimensions)."""
MAX_TOTAL = 2**127 - 1
"""The largest sum a plan's figures may hold: sums of up to 2**64 counts (parameters, bytes)."""

VALUE_KINDS = frozenset(("tensor", "scalar", "none", "tuple", "list", "dict", "other"))
SNAPSHOT_FIX = "fix the snapshot's writer (docs/snapshot-schema.md describes the format)"
PLAN_FIX = "make the plan again with core.plan (or `stagecut plan --json`) instead of editing it"


def is_count(value: object, bound: int = MAX_COUNT) -> bool:
    """An exact int (never a bool) in 0 ..= bound."""
    return type(value) is int and 0 <= value <= bound


# -- snapshots --------------------------------------------------------------------------------


def check_snapshot(snapshot: Snapshot) -> None:
    """Raise `MalformedSnapshot` unless every module's path is its place in the tree, every
    parameter's sizes are counts that agree across tied names, and every traced graph is closed,
    ordered and well formed (node arity, references, called modules, value info)."""
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a core.Snapshot, got {type(snapshot).__name__}")
    root = snapshot.root
    if root.path != "":
        raise _snapshot_error("", "path", f"the root module's path is {root.path!r}; it must be ''.")
    if snapshot._checked:  # immutable, and checked before
        return
    try:
        quick = _modules_ok(snapshot)  # in no order, silent
    except Exception:  # something odd: the ordered check raises what it always did
        quick = False
    if not quick:
        _check_modules(snapshot)  # the first problem in walk order, every time
    object.__setattr__(snapshot, "_checked", True)


def _modules_ok(snapshot: Snapshot) -> bool:
    """True only if `_check_modules` would find nothing; False when it may find something (it then
    runs, and names the first problem in walk order). The same checks in one loop over
    `snapshot.modules` (the table the snapshot made of its tree): no tree walk, no call per module
    or parameter, and each PMap read through its buckets rather than pyrsistent's Python
    iterators (`_PMAP_BUCKETS`: this pyrsistent lays them out as `_probe_buckets` expects).

    Why the table stands for the walk: `_check_modules` visits the root and, from each visited
    module, its children. The root is `table['']`, and for every module of the table each child
    `name` must be `table[join(path, name)]` with that path, so (by induction down the walk) every
    module the walk visits is in the table, and every module in the table has its children, its
    parameters and its graph checked here."""
    table = snapshot.modules
    if not _PMAP_BUCKETS or table.get("") is not snapshot.root:
        return False  # pragma: no cover - pyrsistent's layout changed, or a tampered snapshot
    get = table.get
    first_of: dict[str, Param] = {}  # storage key -> its first parameter
    tie = first_of.setdefault
    traced: list[Module] = []
    for module in table.values():
        item: object = module
        if item.__class__ is not Module:
            return False
        kids: object = module.children
        owned: object = module.params
        if kids.__class__ is not PMap or owned.__class__ is not PMap:
            return False
        children = cast("_Layout[Module]", kids)
        params = cast("_Layout[Param]", owned)
        if children._size:
            path = module.path
            scope = f"{path}." if path else ""
            for bucket in children._buckets:
                if bucket:
                    for name, child in bucket:
                        if name.__class__ is not str or not name or "." in name:
                            return False
                        where = scope + name
                        if get(where) is not child or child.path != where:
                            return False
        if params._size:
            for held in params._buckets:
                if held:
                    for local, param in held:
                        if not (
                            param.__class__ is Param
                            and local.__class__ is str
                            and local
                            and "." not in local
                            and (numel := param.numel).__class__ is int
                            and (nbytes := param.nbytes).__class__ is int
                            and 0 <= numel <= MAX_COUNT
                            and 0 <= nbytes <= MAX_COUNT
                            and param.key.__class__ is str
                            and param.buffer.__class__ is bool
                        ):
                            return False
                        first = tie(param.key, param)
                        if first is not param and (first.numel != numel or first.nbytes != nbytes):
                            return False
        if module.graph is not None:
            traced.append(module)
    for module in traced:
        assert module.graph is not None
        if graph_problem(module.graph, module.path, table) is not None:
            return False
    return True


_V = TypeVar("_V")


class _Layout(Protocol, Generic[_V]):
    """How pyrsistent 0.20 lays out a PMap (`_probe_buckets` checks it on import)."""

    _size: int
    _buckets: Sequence[list[tuple[str, _V]] | None]


def _probe_buckets() -> bool:
    """Whether this pyrsistent keeps a PMap as `_size` (its length) and `_buckets`, a sequence of
    None or lists of (key, value) tuples, each item in one bucket: `_modules_ok` reads them."""
    try:
        items = {str(i): i for i in range(40)}
        for made in (pmap(), pmap({"a": 1}), pmap(items), pmap(items).set("x", 1).discard("3")):
            probe = cast("_Layout[int]", made)
            pairs = [pair for bucket in probe._buckets if bucket for pair in bucket]
            if (
                probe._size != len(made)
                or any(type(bucket) is not list for bucket in probe._buckets if bucket)
                or any(type(pair) is not tuple or len(pair) != 2 for pair in pairs)
                or sorted(pairs) != sorted(made.items())
            ):
                return False  # pragma: no cover
        return True
    except Exception:  # pragma: no cover - another layout
        return False


_PMAP_BUCKETS = _probe_buckets()


def _check_modules(snapshot: Snapshot) -> None:
    """Raise `MalformedSnapshot` for the first problem of the module tree in walk order (children
    in natural name order): the reference that `_modules_ok` runs quickly."""
    tied: dict[str, tuple[str, str, Param]] = {}
    modules = snapshot.modules
    for module in snapshot.root.walk():
        if module.children:
            for name, child in module.children.iteritems():
                if type(name) is not str or not name or "." in name:
                    raise _snapshot_error(
                        module.path, "children",
                        f"child key {name!r} is not a non-empty name without dots (a dot would make "
                        "its path collide with a grandchild's).",
                    )
                if child.path != join(module.path, name):
                    raise _snapshot_error(
                        module.path, f"children{json_key(name)}.path",
                        f"module {child.path!r} is the child {name!r} of {module.path or '<root>'!r}, "
                        f"so its path must be {join(module.path, name)!r}.",
                    )
        if module.params:
            for local, param in module.params.iteritems():  # iteritems: no view object per module
                _check_param(module.path, local, param, tied)
        if module.graph is not None:
            problem = graph_problem(module.graph, module.path, modules)
            if problem is not None:
                raise _snapshot_error(module.path, *problem)


def _check_param(path: str, local: str, param: Param, tied: dict[str, tuple[str, str, Param]]) -> None:
    """One parameter's name and sizes, and its sizes against the first name of its storage key
    (`tied`: key -> (module path, local name, param))."""
    item: object = param
    if (  # the usual case, quickly
        item.__class__ is Param
        and param.numel.__class__ is int
        and param.nbytes.__class__ is int
        and 0 <= param.numel <= MAX_COUNT
        and 0 <= param.nbytes <= MAX_COUNT
        and param.key.__class__ is str
        and param.buffer.__class__ is bool
        and local.__class__ is str
        and local
        and "." not in local
    ):
        first = tied.setdefault(param.key, (path, local, param))[2]
        if first is param or (first.numel == param.numel and first.nbytes == param.nbytes):
            return
    if type(local) is not str or not local or "." in local:
        raise _snapshot_error(path, "params", f"parameter name {local!r} is not a non-empty name without dots.")
    where = f"params{json_key(local)}"
    if not isinstance(item, Param) or type(param.key) is not str:
        raise _snapshot_error(path, where, f"parameter {local!r} is not a Param with a string key.")
    for field in ("numel", "nbytes"):
        value = getattr(param, field)
        if not is_count(value):
            raise _snapshot_error(path, f"{where}.{field}", f"{field} is {value!r}; {_COUNT}.")
    if type(param.buffer) is not bool:
        raise _snapshot_error(path, f"{where}.buffer", f"buffer is {param.buffer!r}; it must be true or false.")
    owner, name, other = tied.setdefault(param.key, (path, local, param))
    if other is not param and (other.numel, other.nbytes) != (param.numel, param.nbytes):
        raise _snapshot_error(
            path, where,
            f"parameter {join(path, local)!r} has key {param.key!r}, like {join(owner, name)!r}, so both "
            f"name one storage, but their sizes differ ({param.numel} elements, {param.nbytes} bytes "
            f"against {other.numel}, {other.nbytes}); give them the same sizes, or different keys.",
        )


_COUNT = f"it must be an integer from 0 to {MAX_COUNT}"
_TOTAL = "it must be an integer from 0 to 2**127 - 1"
# How many positional arguments each op takes (min, max; None = any number).
_ARITY: Mapping[str, tuple[int, int | None]] = {
    "placeholder": (0, 1),  # the default value, if any
    "get_attr": (0, 0),
    "call_function": (0, None),
    "call_method": (1, None),  # the object the method is called on
    "call_module": (0, None),
    "output": (1, 1),  # the returned value
}
_NO_KWARGS = frozenset(("placeholder", "get_attr", "output"))


def graph_problem(graph: Graph, path: str | None, modules: Mapping[str, Module] | None) -> tuple[str, str] | None:
    """The first problem of `graph` as (field, message), or None: the graph must be non-empty
    and end with its one `output` node, names must be unique, every node must have a known op
    with the right number of arguments and only references to earlier nodes, value info must
    hold a known kind and counts, and (with `modules`) every `call_module` must name a module of
    the tree below `path`. A fast pass over every node; the slow one only explains a problem."""
    nodes = graph.nodes
    if type(nodes) is not tuple or not nodes:
        return "graph", "the graph is empty; it must end with one 'output' node."
    last = len(nodes) - 1
    defined: set[str] = set()
    for i, node in enumerate(nodes):
        item: object = node
        if item.__class__ is not Node:
            return _node_problem(i, node, last, defined, graph, path, modules)
        name, op, args = node.name, node.op, node.args
        # the output's arity is in neither table: the slow path explains any output but the last
        low, high = (_ARITY_LAST if i == last else _ARITY_BODY).get(op, _NEVER)
        if (
            args.__class__ is not tuple
            or not low <= len(args) <= high
            or name.__class__ is not str
            or not name
            or name in defined
            or node.target.__class__ is not str
        ):
            return _node_problem(i, node, last, defined, graph, path, modules)
        for arg in args:  # references defined earlier, containers not too deep
            kind = arg.__class__
            if kind is Ref:
                if arg.name not in defined:  # type: ignore[union-attr]
                    return _node_problem(i, node, last, defined, graph, path, modules)
            elif kind in _CONTAINERS and (
                arg_depth(arg) > MAX_ARG_DEPTH or not defined.issuperset(refs(arg))
            ):
                return _node_problem(i, node, last, defined, graph, path, modules)
        if op == "placeholder" and args and (args[0].__class__ is Ref or refs(args[0])):
            return _node_problem(i, node, last, defined, graph, path, modules)
        kwargs = node.kwargs
        if kwargs is not EMPTY_KWARGS and kwargs:
            if op in _NO_KWARGS:
                return _node_problem(i, node, last, defined, graph, path, modules)
            for key, arg in kwargs.items():
                if key.__class__ is not str or arg_depth(arg) > MAX_ARG_DEPTH or not defined.issuperset(refs(arg)):
                    return _node_problem(i, node, last, defined, graph, path, modules)
        info = node.info
        if info is not None:
            nbytes = info.nbytes
            if (
                info.__class__ is not ValueInfo
                or info.kind not in VALUE_KINDS
                or (nbytes is not None and (nbytes.__class__ is not int or not 0 <= nbytes <= MAX_COUNT))
                or (info.shape is not None and info.shape.__class__ is not tuple)
            ):
                return _node_problem(i, node, last, defined, graph, path, modules)
        if op == "call_module" and (
            not node.target or (modules is not None and path is not None and join(path, node.target) not in modules)
        ):
            return _node_problem(i, node, last, defined, graph, path, modules)
        defined.add(name)
    return None


_NEVER = (1, 0)  # an arity no node has: unknown ops, and outputs before the end
_ARITY_BODY: Mapping[str, tuple[int, int]] = {
    op: (low, 1 << 30 if high is None else high) for op, (low, high) in _ARITY.items() if op != "output"
}
_ARITY_LAST: Mapping[str, tuple[int, int]] = {"output": (1, 1)}
_CONTAINERS = frozenset((tuple, ListOf, DictOf, SliceOf))


def _node_problem(
    i: int, node: object, last: int, defined: set[str], graph: Graph, path: str | None,
    modules: Mapping[str, Module] | None,
) -> tuple[str, str] | None:
    """What is wrong with node `i` (the fast pass of `graph_problem` found something)."""
    where = f"graph[{i}]"
    if not isinstance(node, Node):
        return where, f"{node!r} is not a Node."
    name, op = node.name, node.op
    if type(name) is not str or not name:
        return f"{where}.name", f"node name {name!r} is not a non-empty string."
    if name in defined:
        return f"{where}.name", f"two nodes are named {name!r}; node names must be unique."
    if op not in OPS:
        return f"{where}.op", f"node {name!r} has unknown op {op!r}; it must be one of {', '.join(sorted(OPS))}."
    if type(node.target) is not str:
        return f"{where}.target", f"node {name!r} has target {node.target!r}; it must be a string."
    if op == "output" and i != last:
        return where, f"node {name!r} is an output but not the last node; a graph has one output, at its end."
    if i == last and op != "output":
        return where, f"the last node {name!r} is a {op}; the graph must end with one 'output' node."
    args, kwargs = node.args, node.kwargs
    if type(args) is not tuple:
        return f"{where}.args", f"node {name!r} has args {args!r}; they must be a tuple."
    low, high = _ARITY[op]
    if len(args) < low or (high is not None and len(args) > high):
        wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        return f"{where}.args", f"{op} node {name!r} has {len(args)} arguments; it takes {wanted}."
    if kwargs and op in _NO_KWARGS:
        return f"{where}.kwargs", f"{op} node {name!r} has keyword arguments; it takes none."
    if op == "placeholder" and args and refs(args[0]):
        return f"{where}.args", f"placeholder {name!r} has a default value that refers to a node; a default is a constant."
    for arg in args:
        if arg_depth(arg) > MAX_ARG_DEPTH:
            return f"{where}.args", f"node {name!r} has an argument nested more than {MAX_ARG_DEPTH} levels deep."
    for key, arg in kwargs.items():
        if type(key) is not str:
            return f"{where}.kwargs", f"node {name!r} has keyword {key!r}; keywords must be strings."
        if arg_depth(arg) > MAX_ARG_DEPTH:
            return f"{where}.kwargs", f"node {name!r} has an argument nested more than {MAX_ARG_DEPTH} levels deep."
    for used in node.inputs():
        if used not in defined:
            problem = (
                "before it is defined (a cycle, or nodes out of topological order)"
                if used in graph
                else "but no node has that name (a dangling reference)"
            )
            return f"{where}.args", f"node {name!r} uses {used!r} {problem}."
    if node.info is not None:
        info_problem = _info_problem(node.info)
        if info_problem is not None:
            return f"{where}.info{info_problem[0]}", f"node {name!r}: {info_problem[1]}"
    if op == "call_module":
        if not node.target:
            return f"{where}.target", f"call_module node {name!r} names no module."
        if modules is not None and path is not None and join(path, node.target) not in modules:
            return (
                f"{where}.target",
                f"node {name!r} calls module {node.target!r}, which is not in the module tree.",
            )
    return None  # pragma: no cover - the fast pass only calls this on a problem


def _info_problem(info: ValueInfo) -> tuple[str, str] | None:
    item: object = info
    if not isinstance(item, ValueInfo):
        return "", f"value info {info!r} is not a ValueInfo."
    if info.kind not in VALUE_KINDS:
        return ".kind", f"value kind {info.kind!r} is not one of {', '.join(sorted(VALUE_KINDS))}."
    if info.shape is not None:
        if type(info.shape) is not tuple:
            return ".shape", f"shape {info.shape!r} is not a tuple of sizes."
        for d, size in enumerate(info.shape):
            if not is_count(size):
                return f".shape[{d}]", f"dimension {d} of the shape is {size!r}; {_COUNT}."
    if info.dtype is not None and type(info.dtype) is not str:
        return ".dtype", f"dtype {info.dtype!r} is not a string."
    if info.nbytes is not None and not is_count(info.nbytes):
        return ".nbytes", f"nbytes is {info.nbytes!r}; {_COUNT}."
    return None


def json_key(key: str) -> str:
    """A key as a JSON path step: `.name` for a plain name, `["a.b"]` (JSON quoted) otherwise."""
    if _PLAIN_KEY.fullmatch(key):
        return f".{key}"
    return f"[{json.dumps(key)}]"


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _step(field: str) -> str:
    return field if not field or field.startswith(("[", ".")) else f".{field}"


def _snapshot_error(module: str, field: str, message: str) -> MalformedSnapshot:
    err = MalformedSnapshot(f"module {module or '<root>'!r}: {message} To fix: {SNAPSHOT_FIX}.")
    err.location = (module, _step(field))
    return err


# -- plans ------------------------------------------------------------------------------------


def check_plan(plan: Plan) -> None:
    """Raise `MalformedPlan` unless the plan is consistent with its own graphs: stages numbered
    in order, each graph closed and well formed, what a stage receives equal to its placeholders
    and to what the stage before sends, what it sends equal to its output, its modules equal to
    its call_module nodes, byte figures equal to the value info they add up, tie groups naming
    parameters of the stages they list, and one cut between each two stages."""
    from core.plan import Plan, Stage

    if not isinstance(plan, Plan):
        raise TypeError(f"expected a core.Plan, got {type(plan).__name__}")
    stages = plan.stages
    if type(stages) is not tuple or not stages:
        raise _plan_error("stages", "the plan has no stages; it needs at least one.")
    for s, stage in enumerate(stages):
        if not isinstance(stage, Stage):
            raise _plan_error(f"stages[{s}]", f"{stage!r} is not a Stage.")
        _check_stage(stage, s, stages)
    if type(plan.cuts) is not tuple or len(plan.cuts) != len(stages) - 1:
        count = len(plan.cuts) if type(plan.cuts) is tuple else plan.cuts
        raise _plan_error("cuts", f"the plan has {len(stages)} stages and {count!r} cuts; it needs one cut between each two stages.")
    seen: set[Cut] = set()
    for k, cut in enumerate(plan.cuts):
        if not isinstance(cut, Cut) or type(cut.path) is not str or not cut.path or cut.side not in ("after", "before"):
            raise _plan_error(f"cuts[{k}]", f"cut {cut!r} is not 'after:<path>' or 'before:<path>' with a module path.")
        if cut in seen:
            raise _plan_error(f"cuts[{k}]", f"cut {cut} is given twice.")
        seen.add(cut)
    if type(plan.tracer) is not str:
        raise _plan_error("tracer", f"tracer {plan.tracer!r} is not a string.")
    _check_ties(plan)


def _check_stage(stage: object, s: int, stages: tuple[object, ...]) -> None:
    from core.plan import Stage

    assert isinstance(stage, Stage)
    at = f"stages[{s}]"
    if stage.index != s or type(stage.index) is not int:
        raise _plan_error(f"{at}.index", f"stage {s} has index {stage.index!r}; stages are numbered 0, 1, 2... in order.")
    graph = stage.graph
    if not isinstance(graph, Graph):
        raise _plan_error(f"{at}.graph", f"stage {s}'s graph {graph!r} is not a Graph.")
    problem = graph_problem(graph, None, None)
    if problem is not None:
        raise _plan_error(f"{at}.{problem[0]}", f"stage {s}: {problem[1]}")
    for field in ("inputs", "outputs", "params", "modules"):
        names = getattr(stage, field)
        if type(names) is not tuple or any(type(n) is not str for n in names):
            raise _plan_error(f"{at}.{field}", f"stage {s}'s {field} must be a list of strings.")
    received = tuple(n.name for n in graph.nodes if n.op == "placeholder")
    if stage.inputs != received:
        raise _plan_error(f"{at}.inputs", f"stage {s} lists inputs {list(stage.inputs)} but its graph's placeholders are {list(received)}.")
    output = graph.nodes[-1]
    if s + 1 < len(stages):
        sent = output.args[0]
        wanted = tuple(Ref(n) for n in stage.outputs)
        if sent != wanted:
            raise _plan_error(f"{at}.graph[{len(graph) - 1}].args", f"stage {s}'s output node must return the tuple of its outputs {list(stage.outputs)}.")
        following = stages[s + 1]
        if isinstance(following, Stage) and following.inputs != stage.outputs:
            raise _plan_error(
                f"stages[{s + 1}].inputs",
                f"stage {s + 1} receives {list(following.inputs)} but stage {s} sends {list(stage.outputs)}; they must be equal.",
            )
    else:
        returned = tuple(dict.fromkeys(output.inputs()))
        if stage.outputs != returned:
            raise _plan_error(f"{at}.outputs", f"the last stage lists outputs {list(stage.outputs)} but its output node returns {list(returned)}.")
    called = tuple(n.target for n in graph.nodes if n.op == "call_module")
    if stage.modules != called:
        raise _plan_error(f"{at}.modules", f"stage {s} lists modules {list(stage.modules)} but its graph calls {list(called)}.")
    if len(set(stage.params)) != len(stage.params):
        raise _plan_error(f"{at}.params", f"stage {s} lists a parameter twice.")
    fig = stage.figures
    for field in ("params", "param_bytes"):
        if not is_count(getattr(fig, field), MAX_TOTAL):
            raise _plan_error(f"{at}.figures.{field}", f"{field} is {getattr(fig, field)!r}; {_TOTAL}.")
    for field, names in (("bytes_in", stage.inputs), ("bytes_out", stage.outputs)):
        value = getattr(fig, field)
        if value is not None and not is_count(value, MAX_TOTAL):
            raise _plan_error(f"{at}.figures.{field}", f"{field} is {value!r}; {_TOTAL}, or null.")
        expected = graph.bytes_of(names)
        if value != expected:
            raise _plan_error(
                f"{at}.figures.{field}",
                f"stage {s}'s {field} is {value!r} but the value info of {list(names)} adds up to {expected!r}.",
            )



def _check_ties(plan: Plan) -> None:
    if type(plan.ties) is not tuple:
        raise _plan_error("ties", "ties must be a list of tie groups.")
    for g, group in enumerate(plan.ties):
        if type(group) is not tuple or len(group) < 2:
            raise _plan_error(f"ties[{g}]", "a tie group lists at least two [parameter name, stage] pairs.")
        if len(set(group)) != len(group):
            raise _plan_error(f"ties[{g}]", "a tie group lists a [parameter name, stage] pair twice.")
        for m, member in enumerate(group):
            if (
                type(member) is not tuple
                or len(member) != 2
                or type(member[0]) is not str
                or type(member[1]) is not int
            ):
                raise _plan_error(f"ties[{g}][{m}]", f"tie member {member!r} is not a [parameter name, stage] pair.")
            name, stage = member
            if not 0 <= stage < len(plan.stages):
                raise _plan_error(f"ties[{g}][{m}][1]", f"tie member {name!r} names stage {stage}; the plan has stages 0 to {len(plan.stages) - 1}.")
            if name not in plan.stages[stage].params:
                raise _plan_error(f"ties[{g}][{m}][0]", f"tie member {name!r} is not a parameter of stage {stage}.")


def _plan_error(field: str, message: str) -> MalformedPlan:
    err = MalformedPlan(f"plan: {message} To fix: {PLAN_FIX}.")
    err.location = ("", _step(field))
    return err


# -- cuts -------------------------------------------------------------------------------------


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


class _CallSites:
    """`call_sites(snapshot)`, restricted to the graphs of the cuts' ancestors, filled as cuts
    come. A graph calls modules below its own (targets are relative), so every call of a module
    on a cut's way to the root is in the graph of one of the cut's ancestors: scanning those (each
    once) and indexing their calls by callee answers every lookup in O(1). Time: linear in the
    length of the paths involved, whatever the depth; graphs beside the spine are never read."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._modules = snapshot.modules
        self._scanned: set[str] = set()
        self.table: dict[str, list[tuple[str, str]]] = {}

    def scan_ancestors(self, path: str) -> None:
        """Index the calls in the graphs of every ancestor of `path` (the root included)."""
        while path:
            path = path.rpartition(".")[0]
            if path in self._scanned:
                return  # so were all of its own ancestors
            self._scanned.add(path)
            module = self._modules.get(path)
            if module is not None and module.graph is not None:
                for node in module.graph.nodes:
                    if node.op == "call_module":
                        self.table.setdefault(join(path, node.target), []).append((path, node.name))

    def __call__(self, path: str) -> list[tuple[str, str]]:
        """The call sites of `path` (its ancestors scanned), callers from the root down and each
        caller's calls in graph order, as `call_sites` lists them."""
        calls = self.table.get(path, [])
        if len(calls) > 1:  # callers are ancestors of `path`: the shorter path is the higher one
            calls = sorted(calls, key=lambda site: len(site[0]))
        return calls


def check_cuts(snapshot: Snapshot, cuts: Iterable[CutLike]) -> Spine:
    """Normalise and check the cuts; raise a `CutError` naming the path and the fix (and a
    `TypeError` for cuts that are neither `Cut`s nor strings, or one string for the list)."""
    if isinstance(cast(object, cuts), (str, Cut)):
        hint = str(cuts.path if isinstance(cuts, Cut) and cuts.side == "after" else cuts)
        raise TypeError(f"cuts must be a list of cuts, not one {type(cuts).__name__}; did you mean [{hint!r}]?")
    checked = tuple(as_cut(c) for c in cuts)
    seen: set[Cut] = set()
    for cut in checked:
        if cut.side not in ("after", "before"):
            raise CutError(f"cut {cut.path!r}: side {cut.side!r} is neither 'after' nor 'before'.")
        if cut in seen:
            raise DuplicateCut(str(cut))
        seen.add(cut)
    sites = _CallSites(snapshot)
    inline: set[str] = set()
    for cut in checked:
        if not cut.path:
            raise CutAtRoot()
        sites.scan_ancestors(cut.path)
        path = cut.path
        call = cut.call
        while path:  # climb the call chain to the root
            caller = _unique_caller(snapshot, sites, path, str(cut) if call is not None else cut.path, call)
            call = None  # a cut names one call of its own module; every module above is called once
            if not caller or caller in inline:
                break
            inline.add(caller)
            path = caller
    for path in inline:
        _check_inlinable(snapshot, path)
    return Spine(checked, frozenset(inline))


def _unique_caller(snapshot: Snapshot, sites: _CallSites, path: str, cut_path: str, call: int | None = None) -> str:
    modules = snapshot.modules
    if path not in modules:
        raise UnknownPath(cut_path.partition("#")[0].removeprefix("after:").removeprefix("before:"), modules.keys())
    calls = sites(path)
    if call is not None:
        if not 0 <= call < max(len(calls), 1) or not calls:
            raise CutError(
                f"cut {cut_path!r}: module {path!r} is called {len(calls)} time(s); name a call "
                f"from #0 to #{max(len(calls) - 1, 0)}, or leave #k out for a module called once."
            )
        if len({caller for caller, _ in calls}) > 1:
            raise CutError(
                f"cut {cut_path!r}: the calls of {path!r} come from several modules; #k names a "
                "call of a module called from one module only."
            )
        return calls[call][0]
    if len(calls) > 1:
        raise CalledMoreThanOnce(cut_path, path, calls[0][0], len(calls))
    if calls:
        return calls[0][0]
    # Not called: inside an untraced module, or a container such as ModuleList. Blame the
    # outermost untraced module below a traced one: that is where tracing stopped.
    parent, blocker = path, None
    while parent:
        parent = parent.rpartition(".")[0]
        owner = modules[parent]
        if owner.graph is not None:
            break
        if owner.leaf_reason is not None or not parent:
            blocker = owner
    if blocker is not None:
        raise CutInsideLeaf(cut_path, blocker.path, blocker.leaf_reason)
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


__all__ = [
    "MAX_COUNT", "MAX_TOTAL", "Spine", "call_sites", "check_cuts", "check_plan", "check_snapshot", "graph_problem",
    "is_count", "json_key",
]
