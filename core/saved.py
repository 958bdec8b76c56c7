"""What autograd keeps for backward in a stage: derived from the graph with the ops' rules.

    found = saved_in_stages(plan, snapshot)          # one StageSaved per stage
    found[1].saved                                   # bytes kept for backward per microbatch

A small abstract interpreter walks each stage graph in order. Every tensor value is a storage
(a root) plus a layout (shape, strides, dtype) and whether it requires grad; view ops
(`view`, `transpose`, `chunk`, ...) alias their input's storage, `reshape` and `contiguous`
alias it when torch would (the same stride rule as `computeStride`), and other ops make a new
storage of the node's bytes (`ValueInfo.nbytes`). Each op's rule (`_RULES`, keyed by the op's
name: the last part of a call_function target, a method name, an ATen op without its overload)
says which of its tensors autograd saves, as derivatives.yaml does: `mul` saves each input for
the other's gradient, `softmax` its result, `layer_norm` its input and two float32 statistics
per row, `linear` its input folded to 2-D (a copy when the input cannot be viewed so), `matmul`
follows torch's fold/expand/bmm decomposition, `scaled_dot_product_attention` its q, k, v,
result and a float32 log-sum-exp. Nothing is saved where no input requires grad.

The stage's figure is the bytes of the distinct storages saved, parameters and buffers left out
(they are counted as weights): several ops saving one tensor, or views of it, count it once.

Modules: a traced module that stays whole is interpreted through its own graph. An untraced
module (a leaf) is priced by, in order: a measured record (`LeafSaved`, from
`adapters.memory.leaf_saved`: one run with `saved_tensors_hooks`, giving which arguments and
results it keeps and the bytes of what it makes and keeps inside), or a rule for torch.nn's
built-in types (`Linear`, `LayerNorm`, `GELU`, `Embedding`, ...). A leaf with neither, or an op
with no rule, is priced by assumption (it keeps its tensor inputs that need gradients) and named
in `StageSaved.assumed`, so a figure built on a guess says so.

Dtype: with `dtype=`, every floating tensor and parameter is taken to be of that dtype
(`float32`, `bfloat16`, ...) and the rules priced with it (LayerNorm's statistics stay float32
for 16-bit inputs); measured records must then be measured in that dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from core.graph import EMPTY_KWARGS, Arg, DictOf, Graph, ListOf, Node, Opaque, Ref, SliceOf, ValueInfo
from core.snapshot import Module, Snapshot, join

__all__ = ["ArgPath", "FLOAT_DTYPES", "LeafSaved", "RangeSaved", "StageSaved", "has_module_rule", "itemsize", "saved_in_stages"]

FLOAT_DTYPES: Mapping[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}
_OTHER_DTYPES: Mapping[str, int] = {
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "complex64": 8,
    "complex128": 16, "uint16": 2, "uint32": 4, "uint64": 8,
}

ArgPath = tuple[Union[int, str], ...]
"""Where a tensor is in a call's arguments: a positional index or a keyword name, then indices
(or keys) into the tuples, lists and dicts around it: `(0,)`, `("position_embeddings", 1)`."""


def has_module_rule(type_name: str) -> bool:
    """Does core know what a module of this type keeps (a torch.nn built-in with a rule, or a
    container that is never called)?"""
    kind = type_name.rpartition(".")[2]
    return kind in _MODULE_RULES or kind in _PASS_THROUGH or kind in ("ModuleList", "ModuleDict", "Sequential")


def itemsize(dtype: str) -> int | None:
    return FLOAT_DTYPES.get(dtype, _OTHER_DTYPES.get(dtype))


@dataclass(frozen=True, slots=True)
class LeafSaved:
    """What one call of an untraced module keeps for backward (measured or from a rule):
    the arguments whose storage it keeps (`inputs`), the parts of its result it keeps
    (`outputs`: paths into the result, `()` for the result itself), and the tensors it makes
    and keeps inside (`internal`: dtype and bytes of each storage)."""

    inputs: tuple[ArgPath, ...] = ()
    outputs: tuple[ArgPath, ...] = ()
    internal: tuple[tuple[str, int], ...] = ()
    grad_inputs: tuple[ArgPath, ...] = ()  # the floating arguments that needed gradients then
    all_grad: LeafSaved | None = None  # the same call with every floating argument needing them
    grad_outputs: tuple[ArgPath, ...] | None = None  # the parts of the result that needed gradients


@dataclass(frozen=True, slots=True)
class StageSaved:
    """Per microbatch, for one stage: bytes autograd keeps (`saved`), bytes the stage holds
    until its backward (`held`: what it keeps and the outputs it sends, less what it received,
    which lives in the engine's receive buffers), and how much of the first is received
    (`saved_received`). `None` when the graph lacks the value info to tell; `assumed` names
    what was priced without a rule; `why` says what was missing."""

    saved: int | None
    held: int | None
    saved_received: int | None = None
    assumed: tuple[str, ...] = ()
    why: str | None = None


# -- abstract values


@dataclass(frozen=True, slots=True)
class _T:
    """An abstract tensor: its storage (`root`), layout, dtype and whether it needs gradients."""

    root: int
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None  # None: unknown layout (taken as contiguous where it matters)
    dtype: str
    grad: bool


_new_object = object.__new__
_slots: Mapping[str, Any] = _T.__dict__  # the slots' member descriptors
_set_root, _set_shape, _set_strides, _set_dtype, _set_grad = (
    _slots["root"].__set__, _slots["shape"].__set__, _slots["strides"].__set__, _slots["dtype"].__set__, _slots["grad"].__set__,
)


def _t(root: int, shape: tuple[int, ...], strides: tuple[int, ...] | None, dtype: str, grad: bool) -> _T:
    """`_T(...)` without the frozen dataclass's per-field `object.__setattr__` (replays make one
    per block call)."""
    t = _new_object(_T)
    _set_root(t, root)
    _set_shape(t, shape)
    _set_strides(t, strides)
    _set_dtype(t, dtype)
    _set_grad(t, grad)
    return t


@dataclass(frozen=True, slots=True)
class _Fresh:
    """A container result whose items are made on first read (an untraced call's tuple)."""

    key: int


class _Scalar:
    """A Python number whose value the snapshot does not record."""


SCALAR = _Scalar()


class _Missing(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Unknown:
    """The value of a node without value info: fine while nothing reads it (a size check)."""

    name: str


@dataclass(slots=True)
class _Storage:
    """One storage. Never changed once in `_State.storages` (a replay puts one recorded
    `_Storage` in for every call it replays)."""

    nbytes: int
    dtype: str
    param: bool


@dataclass(slots=True)
class _State:
    """One interpretation: the storages made, what autograd keeps, what was assumed."""

    snapshot: Snapshot
    measured: Mapping[str, Sequence[LeafSaved]]
    dtype: str | None
    storages: list[_Storage] = field(default_factory=list)
    kept: set[int] = field(default_factory=set)
    log: list[int] = field(default_factory=list)  # `kept` in the order it grew
    internal: int = 0
    assumed: dict[str, None] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # module path -> calls seen so far
    fresh_items: dict[tuple[int, Any], Any] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)  # parameter key -> its storage
    pending: set[tuple[int, Any]] = field(default_factory=set)  # container items kept when read
    fresh_grad: set[tuple[int, Any]] = field(default_factory=set)  # container items needing grad
    depth: int = 0
    # Calls of traced modules already interpreted, by structure and inputs (see `_traced_call`);
    # shared by the interpretations of one plan (or of one chain's ranges).
    memo: dict[Any, Any] = field(default_factory=dict)
    shapes: _Shapes = field(default_factory=lambda: _Shapes())  # module structures -> numbers
    # The last call replayed whose result has the layout of its input (a block of a stack): its
    # structure number, record and result. The next call of that structure on that result
    # replays the same record without building a key (`_run_graph`).
    chain: _Chain | None = None

    def storage(self, nbytes: int, dtype: str, param: bool = False) -> int:
        self.storages.append(_Storage(nbytes, dtype, param))
        return len(self.storages) - 1

    def keep(self, t: Any) -> None:
        if isinstance(t, _T) and not self.storages[t.root].param:
            self.keep_root(t.root)

    def keep_root(self, root: int) -> None:
        if root not in self.kept:
            self.kept.add(root)
            self.log.append(root)

    def keep_new(self, dtype: str, nbytes: int) -> None:
        self.internal += nbytes


class _Chain:
    """`_State.chain`: a structure number, the replay of its record as a function of the input
    storage, and the last result."""

    __slots__ = ("number", "step", "value", "one")

    def __init__(self, number: int, step: Callable[[_State, int], Any], value: _T, one: _One | None) -> None:
        self.number = number
        self.step = step
        self.value = value
        self.one = one  # the common record, for `_run_graph` to replay inline


_One = tuple["_Storage", bool, int, tuple[int, ...], "tuple[int, ...] | None", str, bool]
"""A record whose result is one new tensor and which keeps nothing new but its input (maybe):
the result's storage, whether the input is kept, the bytes kept inside, the result's layout."""


class _Shapes:
    """Structure numbers of modules (`_structure`): equal structures get one number.

    `by_id` maps id(module) to its number, the module (so the id stays its own while cached) and
    its graph's placeholders; `wholes` maps each structure to its number."""

    __slots__ = ("by_id", "by_path", "wholes", "numbers", "graphs")

    def __init__(self) -> None:
        self.by_id: dict[int, tuple[int, Module, tuple[Node, ...]]] = {}
        # id(graph) -> its number and the graph (so the id stays its own while cached): a
        # frontend shares one graph object among equal blocks, fingerprinted once then
        self.graphs: dict[int, tuple[int, Graph]] = {}
        self.by_path: dict[str, int] = {}  # traced modules' numbers by path, as calls find them
        self.wholes: dict[Any, int] = {}
        self.numbers = itertools.count()


@dataclass(frozen=True, slots=True)
class _Shared:
    """What interpretations of one snapshot can share: its modules' structure numbers and the
    calls of traced modules already interpreted (keyed by structure, input layouts and dtype)."""

    shapes: _Shapes = field(default_factory=_Shapes)
    memo: dict[Any, Any] = field(default_factory=dict)


# Per snapshot, the last few (a snapshot is immutable, so what is derived from it stays true):
# the figures of several schedules, or of many candidate ranges, then interpret each structure
# once. Only without measured records (those are the caller's, and may change).
_SHARED: dict[int, tuple[Snapshot, _Shared]] = {}
_SHARED_KEEP = 4


def _shared(snapshot: Snapshot, measured: Mapping[str, Sequence[LeafSaved]]) -> _Shared:
    if measured:
        return _Shared()
    entry = _SHARED.get(id(snapshot))
    if entry is not None and entry[0] is snapshot:
        return entry[1]
    shared = _Shared()
    _SHARED[id(snapshot)] = (snapshot, shared)
    while len(_SHARED) > _SHARED_KEEP:
        _SHARED.pop(next(iter(_SHARED)), None)
    return shared


def _dtype(state: _State, dtype: str | None) -> str:
    if dtype is None:
        return "float32"
    if state.dtype is not None and dtype in FLOAT_DTYPES:
        return state.dtype
    return dtype


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    out = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        out[i] = out[i + 1] * max(shape[i + 1], 1)
    return tuple(out)


def _is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...] | None) -> bool:
    if strides is None:
        return True
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def view_strides(
    shape: tuple[int, ...], strides: tuple[int, ...], new: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The strides of `view(new)` of a tensor of this layout, or None when it needs a copy
    (ATen's `computeStride`)."""
    if not shape:
        return tuple(1 for _ in new)
    numel = math.prod(shape)
    if numel == 0:
        return strides if shape == new else _contiguous(new)
    out = [0] * len(new)
    view_d = len(new) - 1
    chunk_base = strides[-1]
    tensor_numel = 1
    view_numel = 1
    for d in range(len(shape) - 1, -1, -1):
        tensor_numel *= shape[d]
        if d == 0 or (shape[d - 1] != 1 and strides[d - 1] != tensor_numel * chunk_base):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                out[view_d] = view_numel * chunk_base
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                chunk_base = strides[d - 1]
                tensor_numel = 1
                view_numel = 1
    if view_d != -1:
        return None
    return tuple(out)


# -- the interpreter


def saved_in_stages(
    plan: Any,
    snapshot: Snapshot,
    *,
    measured: Mapping[str, Sequence[LeafSaved]] | None = None,
    dtype: str | None = None,
) -> tuple[StageSaved, ...]:
    """One `StageSaved` per stage of `plan` (a `core.Plan` of `snapshot`)."""
    state_measured = measured or {}
    calls: dict[str, int] = {}
    shared = _shared(snapshot, state_measured)
    out = []
    for stage in plan.stages:
        state = _State(snapshot, state_measured, dtype, calls=calls, memo=shared.memo, shapes=shared.shapes)
        try:
            out.append(_stage(state, stage, stage.index == 0))
        except _Missing as err:
            out.append(StageSaved(None, None, None, tuple(state.assumed), str(err)))
        calls = state.calls
    return tuple(out)


def _stage(state: _State, stage: Any, first: bool) -> StageSaved:
    graph: Graph = stage.graph
    env: dict[str, Any] = {}
    received: set[int] = set()
    for node in graph.placeholders:
        value = _fresh(state, node.info, node.name, grad=not first)
        env[node.name] = value
        if isinstance(value, _T):
            received.add(value.root)
    result = _run_graph(state, graph, env, "", stage_nodes=True)
    sent: set[int] = set()
    for t in _tensors(result):
        if not state.storages[t.root].param:
            sent.add(t.root)
    saved_roots = state.kept
    saved = sum(state.storages[r].nbytes for r in saved_roots) + state.internal
    saved_received = sum(state.storages[r].nbytes for r in saved_roots & received)
    held_roots = (saved_roots | sent) - received
    held = sum(state.storages[r].nbytes for r in held_roots) + state.internal
    return StageSaved(saved, held, saved_received, tuple(state.assumed))


class _LazyEnv(dict[str, Any]):
    """Values by name; a parameter read (get_attr, copied into every stage that reads it) is
    made when first read."""

    def __init__(self, state: _State, graph: Graph) -> None:
        super().__init__()
        self.state = state
        self.graph = graph

    def __missing__(self, name: str) -> Any:
        node = self.graph.node(name)
        if node.op != "get_attr":
            raise KeyError(name)
        value = _attribute(self.state, node, "")
        self[name] = value
        return value


class RangeSaved:
    """What stages made of consecutive segments of a chain keep, for every range at once.

    `flat` is the flat graph with a boundary at every candidate (`core.chain.Chain.flat`):
    the stage between boundaries i and j (segments i..j-1) is what `core.plan` makes of the
    cuts at those two boundaries (when the cuts' spine is the candidates', as for siblings), so
    `held(i)[j - i - 1]` is `saved_in_stages(plan(...))[...].held` for it. Each start is one pass
    over the segments after it; `stop` bounds the pass."""

    def __init__(
        self,
        flat: Any,
        snapshot: Snapshot,
        *,
        measured: Mapping[str, Sequence[LeafSaved]] | None = None,
        dtype: str | None = None,
    ) -> None:
        from core.assign import ANY_STAGE, assign_stages
        from core.liveness import live_in

        self.graph: Graph = flat.graph
        self.snapshot = snapshot
        self.measured = measured or {}
        self.dtype = dtype
        stages = assign_stages(flat)
        self.count = len(flat.boundaries) + 1
        self.live = live_in(self.graph, stages, self.count)
        self.segments: list[list[Node]] = [[] for _ in range(self.count)]
        for node, stage in zip(self.graph.nodes, stages):
            if stage != ANY_STAGE and node.op not in ("placeholder", "output"):
                self.segments[stage].append(node)
        self.output = self.graph.output
        self._cache: dict[int, _Cursor] = {}
        self._shared = _shared(snapshot, self.measured)

    def held(self, start: int, stop: int) -> list[int | None]:
        """Held bytes per microbatch of the stages start..j for j = start+1 .. stop (None where
        value info is missing). Each start's pass is kept and resumed when a longer range is
        asked for."""
        cursor = self._cache.get(start)
        if cursor is None:
            cursor = self._cache[start] = _Cursor(self, start)
        cursor.advance(stop)
        return cursor.out[: stop - start]


class _Cursor:
    """One start's pass over the segments after it, resumable."""

    def __init__(self, ranges: RangeSaved, start: int) -> None:
        self.ranges = ranges
        self.start = start
        self.state = _State(ranges.snapshot, ranges.measured, ranges.dtype, memo=ranges._shared.memo, shapes=ranges._shared.shapes)
        self.env = _LazyEnv(self.state, ranges.graph)
        self.received: set[int] = set()
        self.out: list[int | None] = []
        self.kept_bytes = 0
        self.seen_log = 0  # how much of the state's log is counted in kept_bytes
        self.failed = False
        try:
            for name in ranges.live[start]:
                value = _fresh(self.state, ranges.graph.node(name).info, name, grad=start > 0)
                self.env[name] = value
                if isinstance(value, _T):
                    self.received.add(value.root)
        except _Missing:
            self.failed = True

    def advance(self, stop: int) -> None:
        ranges, state, env = self.ranges, self.state, self.env
        while len(self.out) < stop - self.start:
            k = self.start + len(self.out)
            if self.failed:
                self.out.append(None)
                continue
            try:
                for node in ranges.segments[k]:
                    value = _chained(state, node, env, "") if state.chain is not None and node.op == "call_module" else _NOT_CHAINED
                    env[node.name] = _eval(state, node, env, "") if value is _NOT_CHAINED else value
                for root in state.log[self.seen_log :]:
                    if root not in self.received:
                        self.kept_bytes += state.storages[root].nbytes
                self.seen_log = len(state.log)
                if k + 1 < ranges.count:
                    sent_values = [env[name] for name in ranges.live[k + 1]]
                else:
                    sent_values = [_resolve(ranges.output.args[0], env)] if ranges.output.args else []
            except _Missing:
                self.failed = True
                self.out.append(None)
                continue
            extra = 0
            seen: set[int] = set()
            for t in _tensors(sent_values):
                r = t.root
                if r in state.kept or r in self.received or r in seen or state.storages[r].param:
                    continue
                seen.add(r)
                extra += state.storages[r].nbytes
            self.out.append(self.kept_bytes + extra + state.internal)


def _fresh(state: _State, info: ValueInfo | None, name: str, grad: bool) -> Any:
    """A new value described by `info`: a tensor with its own storage, or a stand-in."""
    if info is None:
        return _Unknown(name)
    if info.kind == "tensor":
        if info.shape is None or info.dtype is None:
            raise _Missing(f"tensor {name!r} has no shape or dtype in its value info")
        dtype = _dtype(state, info.dtype)
        size = itemsize(dtype)
        nbytes = math.prod(info.shape) * size if size is not None else (info.nbytes or 0)
        root = state.storage(nbytes, dtype)
        return _T(root, info.shape, _contiguous(info.shape), dtype, grad and dtype in FLOAT_DTYPES)
    if info.kind == "scalar":
        return SCALAR
    if info.kind == "none":
        return None
    if info.kind in ("tuple", "list", "dict"):
        return _Fresh(state.storage(0, "", param=True))  # a key for its items
    return SCALAR


def _is_constructor(target: str) -> bool:
    """A class called in the graph (transformers' `CausalLMOutputWithPast(...)`) or a builtin
    container: it only holds its arguments."""
    name = target.rpartition(".")[2]
    return target in ("builtins.dict", "builtins.tuple", "builtins.list") or (name[:1].isupper() and not target.startswith("torch."))


def _leaves(value: Any) -> list[Any]:
    """The non-container items of nested tuples, lists and dicts, without recursion."""
    out: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (tuple, list)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        else:
            out.append(v)
    return out


def _tensors(value: Any) -> list[_T]:
    return [v for v in _leaves(value) if isinstance(v, _T)]


def _resolve(arg: Arg, env: Mapping[str, Any]) -> Any:
    if isinstance(arg, Ref):
        return env[arg.name]
    if isinstance(arg, tuple):
        return tuple(_resolve(a, env) for a in arg)
    if isinstance(arg, ListOf):
        return [_resolve(a, env) for a in arg.items]
    if isinstance(arg, DictOf):
        return {_key(_resolve(k, env)): _resolve(v, env) for k, v in arg.items}
    if isinstance(arg, SliceOf):
        return slice(_resolve(arg.start, env), _resolve(arg.stop, env), _resolve(arg.step, env))
    return arg


def _key(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else id(value)


def _run_graph(state: _State, graph: Graph, env: dict[str, Any], prefix: str, stage_nodes: bool = False) -> Any:
    for node in graph.nodes:
        op = node.op
        if op == "placeholder":
            continue
        if op == "output":
            return _resolve(node.args[0], env) if node.args else None
        if state.chain is not None and op == "call_module":
            value = _chained(state, node, env, prefix)
            if value is not _NOT_CHAINED:
                env[node.name] = value
                continue
        env[node.name] = _eval(state, node, env, prefix)
    return None


_NOT_CHAINED = object()


def _chained(state: _State, node: Node, env: Mapping[str, Any], prefix: str) -> Any:
    """The value of a call_module `node` replayed when it is the next block of a stack on the
    last one's result (`state.chain`: the same key as that call's), else `_NOT_CHAINED`."""
    chain = state.chain
    args = node.args
    if chain is None or state.depth >= 10_000 or len(args) != 1 or type(args[0]) is not Ref:
        return _NOT_CHAINED
    if env.get(args[0].name) is not chain.value:
        return _NOT_CHAINED
    kwargs = node.kwargs
    if not (kwargs is EMPTY_KWARGS or not kwargs):
        return _NOT_CHAINED
    if state.shapes.by_path.get(f"{prefix}.{node.target}" if prefix else node.target) != chain.number:
        return _NOT_CHAINED
    one = chain.one
    if one is None:
        value = chain.step(state, chain.value.root)
    else:  # `_stepper`'s `step_one`, inline
        storage, keep_input, internal, shape, strides, dtype, grad = one
        storages = state.storages
        base = len(storages)
        storages.append(storage)
        root = chain.value.root
        if keep_input and root not in state.kept:
            state.kept.add(root)
            state.log.append(root)
        state.internal += internal
        value = _new_object(_T)
        _set_root(value, base)
        _set_shape(value, shape)
        _set_strides(value, strides)
        _set_dtype(value, dtype)
        _set_grad(value, grad)
    chain.value = value
    return value


def _eval(state: _State, node: Node, env: dict[str, Any], prefix: str) -> Any:
    if node.op == "get_attr":
        return _attribute(state, node, prefix)
    args = [env[a.name] if type(a) is Ref else _resolve(a, env) for a in node.args]
    kwargs = {k: _resolve(v, env) for k, v in node.kwargs.items()} if node.kwargs else {}
    if kwargs or not all(type(a) is _T for a in args):
        for value in _leaves([args, kwargs]):
            if isinstance(value, _Unknown):
                raise _Missing(
                    f"value {value.name!r} (read by {node.name!r}) has no value info; make the snapshot "
                    "with example inputs"
                )
    if node.op == "call_function" and _is_constructor(node.target):
        return {**{i: a for i, a in enumerate(args)}, **kwargs}  # a ModelOutput, a dict: no op
    if node.op == "call_module":
        return _module_call(state, node, args, kwargs, prefix)
    name = _op_name(node)
    return _apply(state, name, node, args, kwargs)


def _attribute(state: _State, node: Node, prefix: str) -> Any:
    path = join(prefix, node.target)
    param = state.snapshot.param(path)
    info = node.info
    if param is None:
        if info is None or info.kind != "tensor":
            return SCALAR if info is None or info.kind != "none" else None
        # a constant tensor of the graph (not a registered parameter): never a gradient
        value = _fresh(state, info, node.name, grad=False)
        made = state.storages[value.root]
        state.storages[value.root] = _Storage(made.nbytes, made.dtype, True)  # storages never change
        return value
    root = state.params.get(param.key)
    if root is None:
        root = state.storage(param.nbytes, "", param=True)
        state.params[param.key] = root
    if info is not None and info.kind == "tensor" and info.shape is not None and info.dtype is not None:
        dtype = _dtype(state, info.dtype)
        return _T(root, info.shape, _contiguous(info.shape), dtype, not param.buffer and dtype in FLOAT_DTYPES)
    return _T(root, (param.numel,), (1,), _dtype(state, "float32"), not param.buffer)


def _op_name(node: Node) -> str:
    if node.op == "call_method":
        return node.target
    target = node.target
    if target.startswith("torch.ops."):
        parts = target.split(".")
        return parts[3] if len(parts) > 3 else parts[-1]
    return target.rpartition(".")[2]


# -- modules


def _module_call(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any], prefix: str) -> Any:
    path = join(prefix, node.target)
    module = state.snapshot.modules.get(path)
    count = 0
    if state.measured:  # call counts only choose among measured records
        count = state.calls.get(path, 0)
        state.calls[path] = count + 1
    if module is None:
        return _assume(state, f"module {path}", node, args, kwargs)
    if module.graph is not None and state.depth < 10_000:
        return _traced_call(state, module, node, args, kwargs)
    records = state.measured.get(path)
    if records:
        record = records[min(count, len(records) - 1)]
        return _measured_call(state, record, module, node, args, kwargs)
    kind = module.type_name.rpartition(".")[2]
    inputs = _tensors([args, kwargs])
    trainable = any(not p.buffer for p in _all_params(module))
    grad = any(t.grad for t in inputs) or trainable
    if kind in _PASS_THROUGH and args and isinstance(args[0], _T):
        info = node.info
        if kind == "Identity" or info is None or info.shape is None:
            return args[0]
        return _fold(state, args[0], info.shape)
    rule = _MODULE_RULES.get(kind)
    if rule is not None:
        out = _fresh(state, node.info, node.name, grad=grad)
        if grad and isinstance(out, _T):
            rule(state, module, [a for a in args if isinstance(a, _T)], out)
        return out
    return _assume(state, f"module {path} ({module.type_name or 'untraced'})", node, args, kwargs)


def _traced_call(state: _State, module: Module, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    assert module.graph is not None
    number, placeholders = _structure(state, module)
    state.shapes.by_path[module.path] = number
    inner: dict[str, Any] = {}
    position = 0
    for placeholder in placeholders:
        name = placeholder.target
        if name.startswith("*"):
            raise _Missing(f"module {module.path!r} takes *args or **kwargs; its saved tensors are not derived")
        if position < len(args):
            inner[placeholder.name] = args[position]
            position += 1
        elif name in kwargs:
            inner[placeholder.name] = kwargs[name]
        elif placeholder.args:
            inner[placeholder.name] = _resolve(placeholder.args[0], {})
        else:
            inner[placeholder.name] = None
    # A stack of equal blocks: the same module structure called on inputs of the same layout
    # keeps the same things; interpret it once, replay it for the others.
    roots: dict[int, int] = {}
    try:
        key = (number, _signature(list(inner.values()), roots, state), state.dtype)
    except _NoMemo:
        key = None
    if key is not None:
        recorded = state.memo.get(key)
        if recorded is not None:
            result = _replay(state, recorded, list(roots), module.path)
            if len(args) == 1 and not kwargs and not state.measured:
                _chain(state, number, recorded, result, key, inner)
            return result
    before_storages, outer_kept, outer_log, before_internal = len(state.storages), state.kept, state.log, state.internal
    before_assumed, before_calls = len(state.assumed), dict(state.calls)
    state.kept, state.log = set(), []  # what this call keeps, whatever was kept before it
    state.depth += 1
    try:
        result = _run_graph(state, module.graph, inner, module.path)
    finally:
        state.depth -= 1
        inner_kept, inner_log = state.kept, state.log
        state.kept, state.log = outer_kept, outer_log
        for root in inner_log:
            state.keep_root(root)
    if key is not None and len(state.assumed) == before_assumed:
        try:
            state.memo[key] = _record(state, result, roots, before_storages, inner_kept, before_internal, before_calls, module.path)
        except _NoMemo:
            pass
    return result


class _NoMemo(Exception):
    pass


def _chain(state: _State, number: int, recorded: _Recorded, result: Any, key: Any, inner: dict[str, Any]) -> None:
    """Remember this call for `_run_graph` when calling its structure on its result would have
    the same key (the result has the layout of the input, the other arguments are constants)."""
    if not isinstance(result, _T):
        return
    again = [result, *list(inner.values())[1:]]
    try:
        same = _signature(again, {}, state) == key[1]
    except _NoMemo:
        same = False
    if not same or recorded.kept_inputs not in ((), (0,)):
        state.chain = None
        return
    one: _One | None = None
    if recorded.result[0] == "new" and len(recorded.made) == 1 and not recorded.kept_new:
        _, _, shape, strides, dtype, grad = recorded.result
        one = (recorded.made[0], bool(recorded.kept_inputs), recorded.internal, shape, strides, dtype, grad)
    state.chain = _Chain(number, _stepper(recorded), result, one)


def _stepper(recorded: _Recorded) -> Callable[[_State, int], Any]:
    """`_replay` of a one-input record, as one function of the input storage (`_run_graph`'s
    blocks of a stack)."""
    made, internal, decode = recorded.made, recorded.internal, recorded.decode
    keep_input, kept_new = bool(recorded.kept_inputs), recorded.kept_new
    result = recorded.result

    def step(state: _State, root: int) -> Any:
        storages = state.storages
        base = len(storages)
        storages.extend(made)
        kept, log = state.kept, state.log
        if keep_input and root not in kept:
            kept.add(root)
            log.append(root)
        for i in kept_new:
            kept.add(base + i)
            log.append(base + i)
        state.internal += internal
        return decode(base, [root])

    if result[0] == "new" and len(made) == 1 and not kept_new:  # a block of a stack: one new tensor
        _, _, shape, strides, dtype, grad = result

        def step_one(state: _State, root: int) -> _T:
            storages = state.storages
            base = len(storages)
            storages.append(made[0])
            if keep_input and root not in state.kept:
                state.kept.add(root)
                state.log.append(root)
            state.internal += internal
            return _t(base, shape, strides, dtype, grad)

        return step_one
    return step


def _structure(state: _State, module: Module) -> tuple[int, tuple[Node, ...]]:
    """A number for what makes two modules interpret alike, without their paths: graphs,
    types, parameters and the measured records of the modules below, recursively (computed
    once per module; equal structures get one number, so memo keys hash cheaply); and the
    module's placeholders."""
    shapes = state.shapes
    found = shapes.by_id.get(id(module))
    if found is not None:
        return found[0], found[2]
    # children first, without recursion (trees may be thousands of levels deep); each PMap is
    # iterated once (pyrsistent iterates in Python)
    stack: list[tuple[Module, list[tuple[str, Module]] | None]] = [(module, None)]
    while stack:
        here, children = stack.pop()
        if id(here) in shapes.by_id:
            continue
        if children is None:
            children = list(here.children.items()) if here.children else []
            stack.append((here, children))
            stack.extend((child, None) for _, child in children if id(child) not in shapes.by_id)
            continue
        kids = tuple(sorted([(name, shapes.by_id[id(child)][0]) for name, child in children]))
        params = tuple(sorted([(name, p.numel, p.nbytes, p.buffer) for name, p in here.params.items()])) if here.params else ()
        records = tuple(state.measured.get(here.path, ())) if here.graph is None else ()
        whole = (here.type_name, None if here.graph is None else _graph_number(shapes, here.graph), params, records, kids)
        number = shapes.wholes.setdefault(whole, next(shapes.numbers))  # one hash of the graph
        placeholders = here.graph.placeholders if here.graph is not None else ()
        shapes.by_id[id(here)] = (number, here, placeholders)  # the module too: ids stay unique while cached
    found = shapes.by_id[id(module)]
    return found[0], found[2]


_REF, _LIST, _DICT, _SLICE = object(), object(), object(), object()  # tags no constant can equal


def _graph_number(shapes: _Shapes, graph: Graph) -> int:
    """One number per distinct graph: equal graphs (as `Graph.__eq__` says) get one, and a
    graph object seen before is not read again."""
    found = shapes.graphs.get(id(graph))
    if found is None:
        found = shapes.graphs[id(graph)] = (shapes.wholes.setdefault(_fingerprint(graph), next(shapes.numbers)), graph)
    return found[0]


def _fingerprint(graph: Graph) -> tuple[Any, ...]:
    """The graph as plain tuples, equal exactly when the graphs are equal (as `Graph.__eq__`
    says): hashing and comparing it runs in C, where the nodes' own dataclass methods run in
    Python (most of the first figures of a large snapshot)."""
    out = []
    for node in graph.nodes:
        info = node.info
        kwargs = node.kwargs
        out.append((
            node.name, node.op, node.target,
            tuple([(_REF, a.name) if type(a) is Ref else _plain(a) for a in node.args]),
            () if kwargs is EMPTY_KWARGS or not kwargs else tuple(sorted([(k, _plain(v)) for k, v in kwargs.items()])),
            None if info is None else (info.kind, info.shape, info.dtype, info.nbytes),
        ))
    return tuple(out)


def _plain(arg: Arg) -> Any:
    if isinstance(arg, Ref):
        return (_REF, arg.name)
    if isinstance(arg, tuple):
        return tuple([_plain(a) for a in arg])
    if isinstance(arg, ListOf):
        return (_LIST, tuple([_plain(a) for a in arg.items]))
    if isinstance(arg, DictOf):
        return (_DICT, tuple([(_plain(k), _plain(v)) for k, v in arg.items]))
    if isinstance(arg, SliceOf):
        return (_SLICE, _plain(arg.start), _plain(arg.stop), _plain(arg.step))
    return arg


def _signature(values: list[Any], roots: dict[int, int], state: _State) -> Any:
    """The inputs' layouts, with their storages numbered by first appearance (aliasing)."""
    out: list[Any] = []
    for value in values:
        if isinstance(value, _T):
            if state.storages[value.root].param:
                raise _NoMemo
            number = roots.setdefault(value.root, len(roots))
            out.append(("t", number, value.shape, value.strides, value.dtype, value.grad))
        elif isinstance(value, tuple):
            out.append(("tuple", _signature(list(value), roots, state)))
        elif isinstance(value, list):
            out.append(("list", _signature(value, roots, state)))
        elif isinstance(value, dict):
            out.append(("dict", tuple(value), _signature(list(value.values()), roots, state)))
        elif value is SCALAR or value is None or isinstance(value, (bool, int, float, str, Opaque)):
            out.append(("c", value if value is not SCALAR else "<scalar>"))
        else:
            raise _NoMemo
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Recorded:
    new: tuple[tuple[int, str, bool], ...]  # storages made inside: bytes, dtype, param
    kept_inputs: tuple[int, ...]  # input storage numbers kept
    kept_new: tuple[int, ...]  # indices into `new` kept
    internal: int
    result: Any  # the result with tensors as ("in", number, ...) or ("new", index, ...)
    calls: tuple[tuple[str, int], ...]  # call counts added below the module, by relative path
    # `result` as a function of (first new storage, input storages by number)
    decode: Callable[[int, list[int]], Any] = field(default=lambda base, inputs: None, compare=False, repr=False)
    made: tuple[_Storage, ...] = field(default=(), compare=False, repr=False)  # `new` as storages


def _record(
    state: _State, result: Any, roots: dict[int, int], first: int, kept: set[int],
    internal_before: int, calls_before: dict[str, int], prefix: str,
) -> _Recorded:
    made = list(range(first, len(state.storages)))
    index = {root: i for i, root in enumerate(made)}
    kept_inputs, kept_new = [], []
    for root in kept:
        if root in index:
            kept_new.append(index[root])
        elif root in roots:
            kept_inputs.append(roots[root])
        else:
            raise _NoMemo

    def encode(value: Any) -> Any:
        if isinstance(value, _T):
            if value.root in index:
                return ("new", index[value.root], value.shape, value.strides, value.dtype, value.grad)
            if value.root in roots:
                return ("in", roots[value.root], value.shape, value.strides, value.dtype, value.grad)
            raise _NoMemo
        if isinstance(value, tuple):
            return ("tuple", tuple(encode(v) for v in value))
        if isinstance(value, list):
            return ("list", tuple(encode(v) for v in value))
        if isinstance(value, dict):
            return ("dict", tuple((k, encode(v)) for k, v in value.items()))
        if value is SCALAR or value is None or isinstance(value, (bool, int, float, str, Opaque)):
            return ("c", value)
        raise _NoMemo

    calls = []
    for path, count in state.calls.items():
        added = count - calls_before.get(path, 0)
        if added:
            if not path.startswith(prefix + ".") and prefix:
                raise _NoMemo
            calls.append((path[len(prefix) + 1 :] if prefix else path, added))
    encoded = encode(result)
    # Only the storages the result refers to need to exist again; the others the call keeps
    # are counted as bytes (nothing outside the call can refer to them).
    used = sorted(_new_refs(encoded))
    renumber = {old: i for i, old in enumerate(used)}
    kept_bytes = sum(state.storages[made[i]].nbytes for i in kept_new if i not in renumber)
    result_encoded = _renumber(encoded, renumber)
    return _Recorded(
        tuple((state.storages[made[i]].nbytes, state.storages[made[i]].dtype, state.storages[made[i]].param) for i in used),
        tuple(sorted(set(kept_inputs))), tuple(sorted(renumber[i] for i in kept_new if i in renumber)),
        state.internal - internal_before + kept_bytes, result_encoded, tuple(calls), _decoder(result_encoded),
        tuple(_Storage(state.storages[made[i]].nbytes, state.storages[made[i]].dtype, state.storages[made[i]].param) for i in used),
    )


def _decoder(encoded: Any) -> Callable[[int, list[int]], Any]:
    """A recorded result as a function making it again: (first new storage, input storages by
    number) -> the value (fresh containers, tensors on those storages)."""
    kind = encoded[0]
    if kind in ("new", "in"):
        _, i, shape, strides, dtype, grad = encoded
        if kind == "new":
            return lambda base, inputs: _t(base + i, shape, strides, dtype, grad)
        return lambda base, inputs: _t(inputs[i], shape, strides, dtype, grad)
    if kind in ("tuple", "list"):
        parts = [_decoder(v) for v in encoded[1]]
        if kind == "tuple":
            return lambda base, inputs: tuple(p(base, inputs) for p in parts)
        return lambda base, inputs: [p(base, inputs) for p in parts]
    if kind == "dict":
        items = [(k, _decoder(v)) for k, v in encoded[1]]
        return lambda base, inputs: {k: p(base, inputs) for k, p in items}
    value = encoded[1]
    return lambda base, inputs: value


def _new_refs(encoded: Any) -> set[int]:
    kind = encoded[0]
    if kind == "new":
        return {encoded[1]}
    if kind in ("tuple", "list"):
        return set().union(*(_new_refs(v) for v in encoded[1])) if encoded[1] else set()
    if kind == "dict":
        return set().union(*(_new_refs(v) for _, v in encoded[1])) if encoded[1] else set()
    return set()


def _renumber(encoded: Any, renumber: Mapping[int, int]) -> Any:
    kind = encoded[0]
    if kind == "new":
        return ("new", renumber[encoded[1]], *encoded[2:])
    if kind in ("tuple", "list"):
        return (kind, tuple(_renumber(v, renumber) for v in encoded[1]))
    if kind == "dict":
        return ("dict", tuple((k, _renumber(v, renumber)) for k, v in encoded[1]))
    return encoded


def _replay(state: _State, recorded: _Recorded, inputs: list[int], prefix: str) -> Any:
    """Apply a recorded call to `inputs` (the input storages by number)."""
    storages = state.storages
    base = len(storages)
    storages.extend(recorded.made)
    kept, log = state.kept, state.log
    for number in recorded.kept_inputs:
        root = inputs[number]
        if root not in kept:
            kept.add(root)
            log.append(root)
    for i in recorded.kept_new:
        kept.add(base + i)  # new: not kept before
        log.append(base + i)
    state.internal += recorded.internal
    if state.measured:  # call counts only choose among measured records
        for relative, added in recorded.calls:
            path = join(prefix, relative)
            state.calls[path] = state.calls.get(path, 0) + added
    return recorded.decode(base, inputs)


def _measured_call(
    state: _State, record: LeafSaved, module: Module, node: Node, args: list[Any], kwargs: dict[str, Any]
) -> Any:
    """Apply a measured record; which one depends on which floating arguments need gradients
    here (a stage marks every floating value it receives as needing them)."""
    floats = [(t, where) for t, where in _paths_of(args, kwargs) if t.dtype in FLOAT_DTYPES]
    here = {where for t, where in floats if t.grad}
    if here != set(record.grad_inputs) and record.all_grad is not None:
        if here != {where for _, where in floats}:
            state.assumed[f"module {join('', node.target)} (measured with other arguments needing gradients)"] = None
        record = record.all_grad
    grad = any(t.grad for t, _ in floats) or any(not p.buffer for p in _all_params(module))
    if record.grad_outputs is not None:
        grad = () in record.grad_outputs
    out = _fresh(state, node.info, node.name, grad=grad)
    if isinstance(out, _Fresh) and record.grad_outputs is not None:
        for where in record.grad_outputs:
            if where:
                state.fresh_grad.add((out.key, _key(where[0])))
        state.fresh_grad.add((out.key, None))  # the record decides for this container
    for path in record.inputs:
        state.keep(_follow(args, kwargs, path))
    for path in record.outputs:
        if path and isinstance(out, _Fresh):  # an item of a container result: kept when it is read
            state.pending.add((out.key, _key(path[0])))
        else:
            state.keep(_follow_result(state, out, path, node))
    for dtype, nbytes in record.internal:
        state.keep_new(dtype, nbytes)
    return out


def _all_params(module: Module) -> list[Any]:
    out: list[Any] = []
    stack = [module]
    while stack:
        here = stack.pop()
        out.extend(here.params.values())
        stack.extend(here.children.values())
    return out


def _paths_of(args: list[Any], kwargs: dict[str, Any]) -> list[tuple[_T, ArgPath]]:
    found: list[tuple[_T, ArgPath]] = []
    stack: list[tuple[Any, ArgPath]] = [(a, (i,)) for i, a in enumerate(args)]
    stack += [(v, (k,)) for k, v in kwargs.items()]
    while stack:
        value, where = stack.pop()
        if isinstance(value, _T):
            found.append((value, where))
        elif isinstance(value, (tuple, list)):
            stack.extend((v, (*where, i)) for i, v in enumerate(value))
        elif isinstance(value, dict):
            stack.extend((v, (*where, k)) for k, v in value.items())
    return found


def _follow(args: list[Any], kwargs: dict[str, Any], path: ArgPath) -> Any:
    if not path:
        return None
    head, rest = path[0], path[1:]
    value: Any = args[head] if isinstance(head, int) and head < len(args) else kwargs.get(str(head))
    for step in rest:
        value = _item(value, step)
    return value


def _item(value: Any, step: Any) -> Any:
    if isinstance(value, (tuple, list)) and isinstance(step, int) and -len(value) <= step < len(value):
        return value[step]
    if isinstance(value, dict):
        return value.get(step)
    return None


def _follow_result(state: _State, value: Any, path: ArgPath, node: Node) -> Any:
    for step in path:
        if isinstance(value, _Fresh):
            value = state.fresh_items.get((value.key, step))
        else:
            value = _item(value, step)
    return value


def _output(state: _State, node: Node, args: list[Any]) -> Any:
    """A node's result as a new storage (or stand-in), needing grad when a tensor input does."""
    grad = any(t.grad for t in _tensors(args)) or node.op == "call_module"
    return _fresh(state, node.info, node.name, grad=grad)


def _assume(state: _State, what: str, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """No rule: assume it keeps its tensor inputs that need gradients (and its parameters)."""
    inputs = _tensors([args, kwargs])
    out = _output(state, node, args + list(kwargs.values()))
    if any(t.grad for t in inputs) or node.op == "call_module":
        state.assumed[what] = None
        for t in inputs:
            if t.grad:
                state.keep(t)
    return out


# -- ops


def _apply(state: _State, name: str, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    inplace = name.endswith("_") and not name.endswith("__") and name.rstrip("_") in _INPLACE_BASES
    base = name.rstrip("_") if inplace else name
    if base in _VIEWS:
        return _VIEWS[base](state, node, args, kwargs)
    if base == "getitem":
        return _getitem(state, node, args)
    tensors = _tensors([args, kwargs])
    if base in _CREATE or not tensors:
        value = _fresh(state, node.info, node.name, grad=False)
        return value
    rule = _RULES.get(base)
    grad = any(t.grad for t in tensors)
    if rule is None:
        if not grad:
            return _fresh(state, node.info, node.name, grad=False)
        return _assume(state, f"op {base}", node, args, kwargs)
    if inplace and args and isinstance(args[0], _T):
        out: Any = args[0]
        if grad and not out.grad:
            out = _T(out.root, out.shape, out.strides, out.dtype, out.dtype in FLOAT_DTYPES)
    else:
        out = _fresh(state, node.info, node.name, grad=grad)
    if grad:
        laid_out = rule(state, args, kwargs, out)
        if laid_out is not None:  # the op lays its result out its own way
            out = laid_out
    return out


def _arg(args: list[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _rule_nothing(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    return None


def _rule_self(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    state.keep(_arg(args, kwargs, 0, "input"))


def _rule_result(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    state.keep(out)


def _rule_self_result(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    state.keep(_arg(args, kwargs, 0, "input"))
    state.keep(out)


def _rule_cross(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """mul, mm, bmm: each tensor operand is kept for the other's gradient."""
    _keep_crossed(state, _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other"))


def _keep_crossed(state: _State, a: Any, b: Any) -> None:
    """Two tensor operands of a product: each kept when the other needs a gradient."""
    if isinstance(a, _T) and isinstance(b, _T):
        if b.grad:
            state.keep(a)
        if a.grad:
            state.keep(b)


def _rule_div(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    a = _arg(args, kwargs, 0, "input")
    b = _arg(args, kwargs, 1, "other")
    if isinstance(b, _T):
        state.keep(b)
        if b.grad:
            state.keep(a)


def _rule_pow(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    a = _arg(args, kwargs, 0, "input")
    b = _arg(args, kwargs, 1, "exponent")
    state.keep(a)
    if isinstance(b, _T):
        state.keep(b)
        if b.grad:
            state.keep(out)


def _rule_addmm(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    _rule_cross(state, args[1:], {}, out)


def _rule_addcmul(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    _rule_cross(state, args[1:], {}, out)


def _rule_masked(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """masked_fill(self, mask, value): the mask."""
    state.keep(_arg(args, kwargs, 1, "mask"))


def _rule_where(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    state.keep(_arg(args, kwargs, 0, "condition"))


def _rule_index(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """index_select / gather / index / embedding(weight, indices): the indices."""
    for t in _tensors([args[1:], kwargs]):
        if not t.grad:
            state.keep(t)


def _rule_embedding_fn(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """F.embedding(input, weight) and aten.embedding(weight, indices): the integer indices."""
    for t in _tensors([args, kwargs]):
        if t.dtype not in FLOAT_DTYPES:
            state.keep(t)


def _acc(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def _stats(state: _State, x: _T, rows: int) -> None:
    """Two per-row statistics (mean and 1/std) in the accumulation dtype."""
    acc = _acc(x.dtype)
    state.keep_new(acc, 2 * rows * (itemsize(acc) or 4))


def _rule_layer_norm(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    x = _arg(args, kwargs, 0, "input")
    shape = _arg(args, kwargs, 1, "normalized_shape")
    if not isinstance(x, _T):
        return
    state.keep(x)
    n = len(shape) if isinstance(shape, (tuple, list)) else 1
    _stats(state, x, math.prod(x.shape[: len(x.shape) - n]))


def _rule_group_norm(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    x = _arg(args, kwargs, 0, "input")
    groups = _arg(args, kwargs, 1, "num_groups")
    if isinstance(x, _T):
        state.keep(x)
        _stats(state, x, x.shape[0] * (groups if isinstance(groups, int) else 1))


def _rule_rms_norm(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """F.rms_norm decomposes: x.pow(2).mean -> rsqrt (kept) -> x * rstd (x kept) -> * weight
    (the normalised x kept when there is a weight)."""
    x = _arg(args, kwargs, 0, "input")
    weight = _arg(args, kwargs, 2, "weight")
    shape = _arg(args, kwargs, 1, "normalized_shape")
    if not isinstance(x, _T):
        return
    n = len(shape) if isinstance(shape, (tuple, list)) else 1
    rows = math.prod(x.shape[: len(x.shape) - n])
    state.keep(x)
    state.keep_new(x.dtype, rows * (itemsize(x.dtype) or 4))
    if isinstance(weight, _T):
        state.keep_new(x.dtype, math.prod(x.shape) * (itemsize(x.dtype) or 4))


def _rule_softmax_loss(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """cross_entropy = log_softmax (result kept) + nll_loss (target kept)."""
    x = _arg(args, kwargs, 0, "input")
    target = _arg(args, kwargs, 1, "target")
    if isinstance(x, _T):
        state.keep_new(x.dtype, math.prod(x.shape) * (itemsize(x.dtype) or 4))
    state.keep(target)


def _fold(state: _State, t: _T, shape: tuple[int, ...]) -> _T:
    """`t.reshape(shape)`: a view when the layout allows, else a new contiguous copy."""
    if t.strides is None:
        return _T(t.root, shape, None, t.dtype, t.grad)
    strides = view_strides(t.shape, t.strides, shape)
    if strides is not None:
        return _T(t.root, shape, strides, t.dtype, t.grad)
    size = itemsize(t.dtype) or 4
    return _T(state.storage(math.prod(shape) * size, t.dtype), shape, _contiguous(shape), t.dtype, t.grad)


def _expand(t: _T, shape: tuple[int, ...]) -> _T:
    if t.shape == shape or t.strides is None:
        return _T(t.root, shape, t.strides if t.shape == shape else None, t.dtype, t.grad)
    lead = len(shape) - len(t.shape)
    strides = [0] * lead
    for size, old, stride in zip(shape[lead:], t.shape, t.strides):
        strides.append(stride if size == old else 0)
    return _T(t.root, shape, tuple(strides), t.dtype, t.grad)


def _rule_matmul(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """torch.matmul's decomposition (ATen `_matmul_impl`): what its mm/bmm finally keep."""
    a = _arg(args, kwargs, 0, "input")
    b = _arg(args, kwargs, 1, "other")
    if not (isinstance(a, _T) and isinstance(b, _T)):
        return
    da, db = len(a.shape), len(b.shape)
    if da <= 2 and db <= 2:
        _keep_pair(state, a, b)
        return
    big, small = (a, b) if da >= db else (b, a)
    if len(big.shape) >= 3 and len(small.shape) <= 2:
        if da < db:  # 2D @ ND folds the transposed big operand
            strides = None if big.strides is None else big.strides[:-2] + (big.strides[-1], big.strides[-2])
            big = _T(big.root, big.shape[:-2] + (big.shape[-1], big.shape[-2]), strides, big.dtype, big.grad)
        folded = _fold(state, big, (math.prod(big.shape[:-1]), big.shape[-1]))
        if da >= db:
            _keep_pair(state, folded, small)
        else:
            _keep_pair(state, small, folded)
        return
    batch_a, batch_b = a.shape[: max(da - 2, 0)], b.shape[: max(db - 2, 0)]
    batch = _broadcast(batch_a, batch_b)
    n, m1 = (a.shape[-2] if da > 1 else 1), a.shape[-1]
    m2, p = (b.shape[-2] if db > 1 else b.shape[0]), (b.shape[-1] if db > 1 else 1)
    count = math.prod(batch)
    a2 = _fold(state, _expand(a, batch + (n, m1)), (count, n, m1)) if da > 1 else a
    if db == 1:
        b2 = _fold(state, _expand(b, batch + (m2,)), (count, m2, 1))
    else:
        b2 = _fold(state, _expand(b, batch + (m2, p)), (count, m2, p))
    _keep_pair(state, a2, b2)


def _keep_pair(state: _State, a: _T, b: _T) -> None:
    if b.grad:
        state.keep(a)
    if a.grad:
        state.keep(b)


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    return tuple(max(x, y) if min(x, y) != 0 else 0 for x, y in zip(a, b))


def _rule_linear(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    x = _arg(args, kwargs, 0, "input")
    w = _arg(args, kwargs, 1, "weight")
    if isinstance(x, _T) and isinstance(w, _T):
        _linear(state, x, w.grad, w)


def _linear(state: _State, x: _T, weight_grad: bool, weight: _T | None) -> None:
    """linear/addmm on the input folded to 2-D (a view of a contiguous input, else a copy)."""
    if weight_grad:
        if len(x.shape) > 2:
            state.keep(_fold(state, x, (math.prod(x.shape[:-1]), x.shape[-1])))
        else:
            state.keep(x)
    if x.grad and weight is not None:
        state.keep(weight)


def _rule_sdpa(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> _T | None:
    """q, k, v, the result, a float32 log-sum-exp per query row (flash-style kernels), the mask."""
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    mask = _arg(args, kwargs, 3, "attn_mask")
    for t in (q, k, v, out, mask):
        state.keep(t)
    if isinstance(q, _T):
        state.keep_new("float32", math.prod(q.shape[:-1]) * 4)
    if isinstance(out, _T) and len(out.shape) == 4:
        # flash-style kernels write the result as (batch, length, heads, dim) and return it
        # transposed to (batch, heads, length, dim)
        b, h, n, d = out.shape
        return _T(out.root, out.shape, (n * h * d, d, h * d, 1), out.dtype, out.grad)
    return None


def _rule_dropout(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    """dropout in training with p > 0: a mask of one byte per element (CUDA's native_dropout;
    on the CPU torch keeps a mask of the input's dtype)."""
    x = _arg(args, kwargs, 0, "input")
    p = _arg(args, kwargs, 1, "p", 0.5)
    training = _arg(args, kwargs, 2, "training", True)
    if isinstance(x, _T) and training is not False and p != 0 and p != 0.0:
        state.keep_new("bool", math.prod(x.shape))


def _rule_conv(state: _State, args: list[Any], kwargs: dict[str, Any], out: Any) -> None:
    _keep_crossed(state, _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"))


_RULES: Mapping[str, Callable[[_State, list[Any], dict[str, Any], Any], "_T | None"]] = {
    # nothing kept: sums, shapes, copies, concatenation, conversions
    **{
        name: _rule_nothing
        for name in (
            "add", "sub", "rsub", "neg", "iadd", "isub", "__add__", "__sub__", "__radd__", "__rsub__",
            "sum", "mean", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "to", "type",
            "type_as", "float", "double", "half", "bfloat16", "_to_copy", "clone", "copy", "pad",
            "constant_pad_nd", "repeat", "tile", "flip", "roll", "cumsum", "zero", "fill", "sign",
            "floor", "ceil", "round", "trunc", "frac", "logsumexp_none", "index_put", "scatter_add",
            "masked_scatter", "tril", "triu", "_assert_tensor_metadata", "lift_fresh_copy",
            "alias_copy", "dropout_eval", "identity", "cumsum_", "neg_", "positive", "pos",
            "contiguous_copy", "repeat_interleave", "im2col", "col2im",
        )
    },
    # each operand kept for the other's gradient
    **{name: _rule_cross for name in ("mul", "imul", "__mul__", "__rmul__", "mm", "bmm", "dot", "mv", "outer", "ger", "vdot", "multiply")},
    **{name: _rule_div for name in ("div", "truediv", "itruediv", "__truediv__", "__rtruediv__", "divide", "true_divide")},
    "floordiv": _rule_nothing,
    "remainder": _rule_nothing,
    "fmod": _rule_nothing,
    "pow": _rule_pow,
    "__pow__": _rule_pow,
    "addmm": _rule_addmm,
    "baddbmm": _rule_addmm,
    "addbmm": _rule_addmm,
    "addmv": _rule_addmm,
    "addcmul": _rule_addcmul,
    "addcdiv": _rule_addcmul,
    "matmul": _rule_matmul,
    "__matmul__": _rule_matmul,
    "linear": _rule_linear,
    "_flatten_nd_linear": _rule_linear,
    # the input is kept
    **{
        name: _rule_self
        for name in (
            "gelu", "silu", "mish", "abs", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
            "erf", "erfinv", "softplus", "leaky_relu", "hardswish", "hardsigmoid", "hardtanh",
            "relu6", "clamp", "clip", "clamp_min", "clamp_max", "square", "asin", "acos", "atan",
            "sinh", "cosh", "asinh", "acosh", "atanh", "expm1", "lgamma", "digamma", "celu",
            "selu", "glu", "prelu", "rrelu", "logsigmoid", "sgn", "xlogy", "gelu_backward",
            "silu_backward",
        )
    },
    # the result is kept
    **{
        name: _rule_result
        for name in ("relu", "tanh", "sigmoid", "exp", "exp2", "sqrt", "rsqrt", "softmax", "_softmax",
                     "log_softmax", "_log_softmax", "reciprocal", "elu", "threshold")
    },
    # input and result
    **{name: _rule_self_result for name in ("norm", "std", "amax", "amin", "cumprod", "prod", "logsumexp",
                                             "linalg_vector_norm", "frobenius_norm", "var", "max", "min")},
    "maximum": _rule_cross,
    "minimum": _rule_cross,
    "fmax": _rule_cross,
    "fmin": _rule_cross,
    "masked_fill": _rule_masked,
    "where": _rule_where,
    "index_select": _rule_index,
    "gather": _rule_index,
    "index": _rule_index,
    "take_along_dim": _rule_index,
    "embedding": _rule_embedding_fn,
    "layer_norm": _rule_layer_norm,
    "group_norm": _rule_group_norm,
    "rms_norm": _rule_rms_norm,
    "cross_entropy": _rule_softmax_loss,
    "scaled_dot_product_attention": _rule_sdpa,
    "_scaled_dot_product_flash_attention_for_cpu": _rule_sdpa,
    "_scaled_dot_product_efficient_attention": _rule_sdpa,
    "_scaled_dot_product_flash_attention": _rule_sdpa,
    "dropout": _rule_dropout,
    "native_dropout": _rule_dropout,
    "conv1d": _rule_conv,
    "conv2d": _rule_conv,
    "conv3d": _rule_conv,
    "convolution": _rule_conv,
    "_convolution": _rule_conv,
}

_INPLACE_BASES = frozenset(
    {"add", "sub", "mul", "div", "relu", "masked_fill", "clamp", "copy", "fill", "zero", "neg", "tanh", "sigmoid",
     "exp", "pow", "sqrt", "rsqrt", "gelu", "silu", "addcmul", "addcdiv", "cumsum", "tril", "triu", "dropout",
     "hardtanh", "leaky_relu", "elu", "index_put", "scatter_add", "masked_scatter"}
)

# Ops that make tensors from nothing that needs gradients.
_CREATE = frozenset(
    {
        "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "rand",
        "randn", "randint", "randperm", "zeros_like", "ones_like", "empty_like", "full_like",
        "rand_like", "randn_like", "randint_like", "new_zeros", "new_ones", "new_empty", "new_full",
        "new_tensor", "empty_strided", "tensor", "scalar_tensor", "as_tensor", "bernoulli",
        "multinomial", "argmax", "argmin", "argsort", "eq", "ne", "lt", "le", "gt", "ge",
        "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "logical_and", "logical_or",
        "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "invert", "__invert__",
        "and_", "or_", "xor", "__and__", "__or__", "__xor__", "bitwise_and", "bitwise_or",
        "bitwise_not", "bitwise_xor", "detach_copy", "sym_size", "sym_numel", "sym_stride",
        "size", "dim", "numel", "nonzero", "bucketize", "searchsorted", "one_hot", "diff_int",
        "triu_indices", "tril_indices", "item", "tolist", "getattr", "stride", "is_contiguous",
        "element_size", "data_ptr", "is_floating_point",
    }
)


# -- views (the result aliases the input's storage)


def _view_like(state: _State, node: Node, base: Any, strides_of: Callable[[_T, tuple[int, ...]], tuple[int, ...] | None] | None) -> Any:
    if not isinstance(base, _T):
        return _fresh(state, node.info, node.name, grad=False)
    info = node.info
    if info is None or info.kind != "tensor" or info.shape is None:
        raise _Missing(f"view {node.name!r} has no shape in its value info")
    shape = info.shape
    strides = None if strides_of is None or base.strides is None else strides_of(base, shape)
    return _T(base.root, shape, strides, base.dtype, base.grad)


def _v_reshape(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")
    info = node.info
    if not isinstance(base, _T) or info is None or info.shape is None:
        return _view_like(state, node, base, None)
    return _fold(state, base, info.shape)


def _v_view(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")
    return _view_like(state, node, base, lambda t, shape: view_strides(t.shape, t.strides or (), shape))


def _v_alias(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if isinstance(base, _T):
        info = node.info
        if info is not None and info.kind == "tensor" and info.dtype is not None and _dtype(state, info.dtype) != base.dtype:
            return _fresh(state, info, node.name, grad=base.grad)  # a dtype change copies
        return base
    return _fresh(state, node.info, node.name, grad=False)


def _v_detach(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")
    if isinstance(base, _T):
        return _T(base.root, base.shape, base.strides, base.dtype, False)
    return base


def _v_contiguous(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")
    if isinstance(base, _T) and not _is_contiguous(base.shape, base.strides):
        return _fresh(state, node.info, node.name, grad=base.grad)
    return _v_alias(state, node, args, kwargs)


def _dims(value: Any, ndim: int) -> list[int]:
    if isinstance(value, (tuple, list)):
        return [int(v) % ndim if isinstance(v, int) else 0 for v in value]
    return [int(value) % ndim] if isinstance(value, int) else []


def _v_transpose(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")

    def strides(t: _T, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        assert t.strides is not None
        n = len(t.shape)
        if n < 2:
            return t.strides
        d0 = _arg(args, kwargs, 1, "dim0", 0 if n == 2 else None)
        d1 = _arg(args, kwargs, 2, "dim1", 1 if n == 2 else None)
        if not isinstance(d0, int) or not isinstance(d1, int):
            return None
        s = list(t.strides)
        s[d0 % n], s[d1 % n] = s[d1 % n], s[d0 % n]
        return tuple(s)

    return _view_like(state, node, base, strides)


def _v_t(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else None
    return _view_like(state, node, base, lambda t, shape: tuple(reversed(t.strides or ())) if len(t.shape) == 2 else t.strides)


def _v_permute(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")
    dims_arg: list[Any] = list(args[1:]) if len(args) > 1 else [kwargs.get("dims")]
    if len(dims_arg) == 1 and isinstance(dims_arg[0], (tuple, list)):
        dims_arg = list(dims_arg[0])
    dims = [d for d in dims_arg if isinstance(d, int)]

    def strides(t: _T, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        assert t.strides is not None
        if len(dims) != len(t.shape) or len(dims) != len(dims_arg):
            return None
        return tuple(t.strides[d % len(t.shape)] for d in dims)

    return _view_like(state, node, base, strides)


def _v_unsqueeze(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")

    def strides(t: _T, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        assert t.strides is not None
        d = _arg(args, kwargs, 1, "dim")
        if not isinstance(d, int):
            return None
        d = d % (len(t.shape) + 1)
        inner = t.strides[d] * t.shape[d] if d < len(t.shape) else 1
        return t.strides[:d] + (inner,) + t.strides[d:]

    return _view_like(state, node, base, strides)


def _v_squeeze(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")

    def strides(t: _T, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        assert t.strides is not None
        keep = [i for i, s in enumerate(t.shape) if s != 1]
        if len(shape) == len(keep):
            return tuple(t.strides[i] for i in keep)
        return view_strides(t.shape, t.strides, shape)

    return _view_like(state, node, base, strides)


def _v_expand(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")
    info = node.info
    if isinstance(base, _T) and info is not None and info.shape is not None:
        return _expand(base, info.shape)
    return _view_like(state, node, base, None)


def _v_same_strides(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """slice / narrow: the same strides, one dimension stepped."""
    base = args[0] if args else kwargs.get("input")

    def strides(t: _T, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        assert t.strides is not None
        if len(shape) != len(t.shape):
            return None
        step = _arg(args, kwargs, 4, "step", 1)
        dim = _arg(args, kwargs, 1, "dim", 0)
        s = list(t.strides)
        if isinstance(step, int) and isinstance(dim, int) and step != 1:
            s[dim % len(s)] *= step
        return tuple(s)

    return _view_like(state, node, base, strides)


def _v_select(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    base = args[0] if args else kwargs.get("input")

    def strides(t: _T, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        assert t.strides is not None
        dim = _arg(args, kwargs, 1, "dim", 0)
        if not isinstance(dim, int) or not t.shape:
            return None
        d = dim % len(t.shape)
        return t.strides[:d] + t.strides[d + 1 :]

    return _view_like(state, node, base, strides)


def _v_pieces(state: _State, node: Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """chunk / split / tensor_split / unbind: a sequence of views, made when read."""
    base = args[0] if args else kwargs.get("input", kwargs.get("tensor"))
    if not isinstance(base, _T):
        return _fresh(state, node.info, node.name, grad=False)
    unbind = _op_name(node) == "unbind"
    return _Pieces(base, unbind, _arg(args, kwargs, 1 if unbind else 2, "dim", 0))


@dataclass(frozen=True, slots=True)
class _Pieces:
    base: _T
    drop: bool  # unbind drops the dimension
    dim: Any


def _getitem(state: _State, node: Node, args: list[Any]) -> Any:
    container = args[0] if args else None
    index = args[1] if len(args) > 1 else None
    if isinstance(container, _Pieces):
        base = container.base
        info = node.info
        if info is None or info.shape is None:
            raise _Missing(f"value {node.name!r} has no shape in its value info")
        strides = base.strides
        if container.drop and strides is not None and isinstance(container.dim, int) and base.shape:
            d = container.dim % len(base.shape)
            strides = strides[:d] + strides[d + 1 :]
        if strides is not None and len(strides) != len(info.shape):
            strides = None
        return _T(base.root, info.shape, strides, base.dtype, base.grad)
    if isinstance(container, _Fresh):
        key = (container.key, _key(index))
        found = state.fresh_items.get(key)
        if found is None:
            grad = key in state.fresh_grad if (container.key, None) in state.fresh_grad else True
            found = _fresh(state, node.info, node.name, grad=grad)
            state.fresh_items[key] = found
            if key in state.pending:
                state.keep(found)
        return found
    if isinstance(container, (tuple, list)):
        if isinstance(index, int) and -len(container) <= index < len(container):
            return container[index]
        return _fresh(state, node.info, node.name, grad=False)
    if isinstance(container, dict):
        if index in container:
            return container[index]
        return _fresh(state, node.info, node.name, grad=False)
    if isinstance(container, _T):
        return _tensor_index(state, node, container, index)
    return _fresh(state, node.info, node.name, grad=False)


def _tensor_index(state: _State, node: Node, base: _T, index: Any) -> Any:
    """`x[...]`: basic indexing (ints, slices, None, ...) is a view; tensor indices copy and
    keep the indices for backward."""
    parts = index if isinstance(index, tuple) else (index,)
    tensors = [p for p in parts if isinstance(p, (_T, list))]
    if tensors:
        out = _fresh(state, node.info, node.name, grad=base.grad)
        if base.grad:
            for p in _tensors(parts):
                state.keep(p)
        return out
    info = node.info
    if info is None or info.shape is None:
        raise _Missing(f"value {node.name!r} has no shape in its value info")
    strides: list[int] | None = [] if base.strides is not None else None
    d = 0
    if strides is not None:
        assert base.strides is not None
        consumed = sum(1 for p in parts if isinstance(p, (int, slice)))
        for p in parts:
            if p is None:
                strides.append(0)
            elif isinstance(p, Opaque) and p.token == "ellipsis":
                covered = max(0, len(base.shape) - consumed)
                strides.extend(base.strides[d : d + covered])
                d += covered
            elif isinstance(p, int):
                d += 1
            elif isinstance(p, slice):
                step = p.step if isinstance(p.step, int) else 1
                if d < len(base.strides):
                    strides.append(base.strides[d] * step)
                d += 1
            else:  # something unknown
                strides = None
                break
        if strides is not None:
            strides.extend(base.strides[d:])
            if len(strides) != len(info.shape):
                strides = None
    return _T(base.root, info.shape, tuple(strides) if strides is not None else None, base.dtype, base.grad)


_VIEWS: Mapping[str, Callable[[_State, Node, list[Any], dict[str, Any]], Any]] = {
    "view": _v_view,
    "_unsafe_view": _v_view,
    "view_as": _v_view,
    "reshape": _v_reshape,
    "reshape_as": _v_reshape,
    "flatten": _v_reshape,
    "unflatten": _v_reshape,
    "_reshape_alias": _v_view,
    "transpose": _v_transpose,
    "swapaxes": _v_transpose,
    "swapdims": _v_transpose,
    "t": _v_t,
    "permute": _v_permute,
    "unsqueeze": _v_unsqueeze,
    "squeeze": _v_squeeze,
    "expand": _v_expand,
    "expand_as": _v_expand,
    "broadcast_to": _v_expand,
    "slice": _v_same_strides,
    "narrow": _v_same_strides,
    "select": _v_select,
    "chunk": _v_pieces,
    "split": _v_pieces,
    "split_with_sizes": _v_pieces,
    "tensor_split": _v_pieces,
    "unbind": _v_pieces,
    "detach": _v_detach,
    "alias": _v_alias,
    "contiguous": _v_contiguous,
    "to": _v_alias,
    "type_as": _v_alias,
    "float": _v_alias,
    "double": _v_alias,
    "half": _v_alias,
    "bfloat16": _v_alias,
    "requires_grad_": _v_alias,
    "dropout_": _v_alias,
}


# -- torch.nn leaf modules


def _m_linear(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs:
        weight = module.params.get("weight")
        grad = weight is not None and not weight.buffer
        _linear(state, inputs[0], grad, None)


def _m_self(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs and inputs[0].grad:
        state.keep(inputs[0])


def _m_result(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs and inputs[0].grad:
        state.keep(out)


def _m_layer_norm(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if not inputs:
        return
    x = inputs[0]
    state.keep(x)
    weight = module.params.get("weight")
    n = 1 if weight is None else _norm_dims(x.shape, weight.numel)
    _stats(state, x, math.prod(x.shape[: len(x.shape) - n]))


def _norm_dims(shape: tuple[int, ...], numel: int) -> int:
    """How many trailing dimensions a norm's weight of `numel` elements covers."""
    total = 1
    for n, size in enumerate(reversed(shape), start=1):
        total *= size
        if total == numel:
            return n
    return 1


def _m_rms_norm(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if not inputs:
        return
    x = inputs[0]
    weight = module.params.get("weight")
    n = 1 if weight is None else _norm_dims(x.shape, weight.numel)
    rows = math.prod(x.shape[: len(x.shape) - n])
    state.keep(x)
    size = itemsize(x.dtype) or 4
    state.keep_new(x.dtype, rows * size)
    if weight is not None:
        state.keep_new(x.dtype, math.prod(x.shape) * size)


def _m_group_norm(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs:
        state.keep(inputs[0])
        _stats(state, inputs[0], inputs[0].shape[0] if inputs[0].shape else 1)


def _m_batch_norm(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs:
        x = inputs[0]
        state.keep(x)
        channels = x.shape[1] if len(x.shape) > 1 else (x.shape[0] if x.shape else 1)
        acc = _acc(x.dtype)
        state.keep_new(acc, 2 * channels * (itemsize(acc) or 4))


def _m_embedding(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs:
        state.keep(inputs[0])


def _m_conv(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs:
        state.keep(inputs[0])


def _m_dropout(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs and inputs[0].grad:
        state.keep_new("bool", math.prod(inputs[0].shape))


def _m_softmax(state: _State, module: Module, inputs: list[_T], out: _T) -> None:
    if inputs and inputs[0].grad:
        state.keep(out)


_MODULE_RULES: Mapping[str, Callable[[_State, Module, list[_T], _T], None]] = {
    "Linear": _m_linear,
    "LazyLinear": _m_linear,
    "NonDynamicallyQuantizableLinear": _m_linear,
    "LayerNorm": _m_layer_norm,
    "RMSNorm": _m_rms_norm,
    "GroupNorm": _m_group_norm,
    "BatchNorm1d": _m_batch_norm,
    "BatchNorm2d": _m_batch_norm,
    "BatchNorm3d": _m_batch_norm,
    "Embedding": _m_embedding,
    "Conv1d": _m_conv,
    "Conv2d": _m_conv,
    "Conv3d": _m_conv,
    "GELU": _m_self,
    "SiLU": _m_self,
    "Mish": _m_self,
    "LeakyReLU": _m_self,
    "Hardswish": _m_self,
    "Hardtanh": _m_self,
    "ReLU6": _m_self,
    "Softplus": _m_self,
    "ReLU": _m_result,
    "Tanh": _m_result,
    "Sigmoid": _m_result,
    "ELU": _m_result,
    "Softmax": _m_softmax,
    "LogSoftmax": _m_softmax,
    "Dropout": _m_dropout,
    "Dropout1d": _m_dropout,
    "Dropout2d": _m_dropout,
}
_PASS_THROUGH = frozenset({"Identity", "Flatten", "Unflatten"})  # their result is a view of the input
