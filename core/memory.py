"""Weights, gradients and optimizer state per stage, for an optimizer and a training dtype.

    weights = stage_weights(plan, snapshot, optimizer="adam", dtype="bfloat16")
    weights[0].total                       # bytes that do not depend on the microbatches

Per parameter element (one count per storage: a tied weight held by two stages counts in both,
as each rank holds its own copy), with `p` the item size of the training dtype (the snapshot's
own when `dtype` is None; a 16-bit one means mixed precision either way):

| optimizer | dtype 32/64-bit | 16-bit (mixed precision: float32 master weights and state) |
|---|---|---|
| `sgd` | weights p + grads p | weights 2 + grads 2 + master 4 |
| `momentum` (SGD with momentum) | + state p | + master 4 + state 4 |
| `adam`, `adamw` | + 2 states of p | + master 4 + 2 states of 4 (16 bytes in all) |

Buffers (running statistics, rotary tables) count once, in their own dtype, with no gradient or
state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.errors import PlanError
from core.saved import itemsize
from core.snapshot import Param, Snapshot

__all__ = ["DTYPES", "OPTIMIZERS", "FiguresError", "StageWeights", "check_dtype", "check_optimizer", "param_bytes", "stage_weights"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


class FiguresError(PlanError):
    """The figures cannot be computed with these settings (an unknown optimizer, dtype, ...)."""


def check_optimizer(optimizer: str) -> None:
    if optimizer not in _STATES:
        raise FiguresError(f"optimizer={optimizer!r}: choose one of {', '.join(OPTIMIZERS)}.")


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise FiguresError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)} (or None: the model's own).")


@dataclass(frozen=True, slots=True)
class StageWeights:
    """Bytes one stage holds whatever the microbatches: parameters (in the training dtype),
    buffers, gradients, and optimizer state with any float32 master copy."""

    params: int  # parameter elements
    weights: int
    buffers: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.buffers + self.grads + self.optimizer


def stage_weights(plan: Any, snapshot: Snapshot, *, optimizer: str = "adam", dtype: str | None = None) -> tuple[StageWeights, ...]:
    """One `StageWeights` per stage of `plan` (see the module doc for the bytes per element)."""
    check_optimizer(optimizer)
    check_dtype(dtype)
    derived = _derived(snapshot)
    out = []
    for stage in plan.stages:
        found = _by_modules(derived, snapshot, stage)
        if found is None:  # every name on its own, in the plan's order
            found = _Sums(), [(name, p) for name in stage.params if (p := snapshot.param(name)) is not None]
        else:  # the plan lists names in name order
            found[1].sort(key=lambda item: item[0])
        sums, tied = found
        # a storage held under several names: once per stage, as its first name
        seen: set[str] = set()
        for _, param in tied:
            if param.key not in seen:
                seen.add(param.key)
                sums.add(param)
        out.append(sums.weights(optimizer, dtype))
    return tuple(out)


class _Sums:
    """Parameter elements and bytes, by the parameters' own item size (the bytes of each figure
    are linear in those within one item size), and buffer bytes."""

    __slots__ = ("by_size", "buffers")

    def __init__(self) -> None:
        self.by_size: dict[int, list[int]] = {}
        self.buffers = 0

    def add(self, param: Param) -> None:
        if param.buffer:
            self.buffers += param.nbytes
        else:
            self.add_size(param.nbytes // param.numel if param.numel else 0, param.numel, param.nbytes)

    def add_size(self, own: int, numel: int, nbytes: int) -> None:
        found = self.by_size.get(own)
        if found is None:
            self.by_size[own] = [numel, nbytes]
        else:
            found[0] += numel
            found[1] += nbytes

    def flat(self) -> tuple[int, tuple[tuple[int, int, int], ...]]:
        return self.buffers, tuple((own, n, b) for own, (n, b) in self.by_size.items())

    def weights(self, optimizer: str, dtype: str | None) -> StageWeights:
        """`param_bytes` summed over the parameters counted."""
        numel = weights = state = 0
        states = _STATES[optimizer]
        for own, (n, nbytes) in self.by_size.items():
            size = (itemsize(dtype) or own) if dtype is not None else own
            w = nbytes if dtype is None else n * size
            numel += n
            weights += w
            state += n * 4 * (1 + states) if size == 2 else n * size * states
        return StageWeights(numel, weights, self.buffers, weights, state)


_Sizes = tuple[int, tuple[tuple[int, int, int], ...]]
"""Buffer bytes, and (own item size, elements, bytes) of the untied parameters."""
_Summary = tuple[frozenset[str], _Sizes, tuple[tuple[str, Param], ...], tuple[str, ...]]
"""Of one module: the qualified names of the parameters below it, what its untied parameters and
buffers add up to (one object for equal sums), its tied (name, param) pairs and its ancestors'
paths."""


class _Derived:
    """Per snapshot: the storage keys held under more than one name (tied), and per module the
    names below it, what its untied parameters sum to and its tied (name, param) pairs."""

    __slots__ = ("tied", "modules", "sizes")

    def __init__(self, snapshot: Snapshot) -> None:
        names: dict[str, int] = {}
        for module in snapshot.root.walk(ordered=False):
            for param in module.params.values():
                names[param.key] = names.get(param.key, 0) + 1
        self.tied = frozenset(key for key, count in names.items() if count > 1)
        self.modules: dict[str, _Summary] = {}
        self.sizes: dict[_Sizes, _Sizes] = {}

    def module(self, snapshot: Snapshot, path: str) -> _Summary:
        found = self.modules.get(path)
        if found is None:
            sums, tied, names = _Sums(), [], []
            for name, param in snapshot.params_under(path):
                names.append(name)
                if param.key in self.tied:
                    tied.append((name, param))
                else:
                    sums.add(param)
            sizes = sums.flat()
            sizes = self.sizes.setdefault(sizes, sizes)
            ancestors = []
            parent = path
            while "." in parent:
                parent = parent.rpartition(".")[0]
                ancestors.append(parent)
            found = self.modules[path] = (frozenset(names), sizes, tuple(tied), tuple(ancestors))
        return found


# The last few snapshots' (immutable, so what is derived from one stays true).
_DERIVED: dict[int, tuple[Snapshot, _Derived]] = {}


def _derived(snapshot: Snapshot) -> _Derived:
    entry = _DERIVED.get(id(snapshot))
    if entry is not None and entry[0] is snapshot:
        return entry[1]
    derived = _Derived(snapshot)
    _DERIVED[id(snapshot)] = (snapshot, derived)
    while len(_DERIVED) > 4:
        _DERIVED.pop(next(iter(_DERIVED)), None)
    return derived


def _by_modules(derived: _Derived, snapshot: Snapshot, stage: Any) -> tuple[_Sums, list[tuple[str, Param]]] | None:
    """A stage's untied sums and tied pairs from the summaries of the modules it calls whole
    (the plan lists their parameters under `params`, with those it reads itself), or None when
    its parameter names are not made that way."""
    names = frozenset(stage.params)
    if len(names) != len(stage.params):
        return None
    held = dict.fromkeys(stage.modules)
    modules = derived.modules
    found = []
    for path in held:
        summary = modules.get(path)
        if summary is None:
            if path not in snapshot.modules:
                return None
            summary = derived.module(snapshot, path)
        if not summary[0] <= names:
            return None
        for parent in summary[3]:  # a module inside another: their names overlap
            if parent in held:
                return None
        found.append(summary)
    sums, tied = _Sums(), list[tuple[str, Param]]()
    covered = 0
    for sizes, count in Counter(f[1] for f in found).items():
        sums.buffers += count * sizes[0]
        for own, numel, nbytes in sizes[1]:
            sums.add_size(own, count * numel, count * nbytes)
    for summary in found:
        covered += len(summary[0])
        if summary[2]:
            tied.extend(summary[2])
    if covered != len(names):  # names the stage reads itself (get_attr)
        for name in sorted(names.difference(*(f[0] for f in found))):
            param = snapshot.param(name)
            if param is None:
                continue
            if param.key in derived.tied:
                tied.append((name, param))
            else:
                sums.add(param)
    return sums, tied


def param_bytes(param: Param, optimizer: str, dtype: str | None) -> tuple[int, int, int, int]:
    """(weights, buffers, grads, optimizer state) bytes of one parameter storage (module doc)."""
    if param.buffer:
        return 0, param.nbytes, 0, 0
    own = param.nbytes // param.numel if param.numel else 0
    size = (itemsize(dtype) or own) if dtype is not None else own
    weights = param.nbytes if dtype is None else param.numel * size
    states = _STATES[optimizer]
    if size == 2:  # 16-bit training: float32 master weights and state
        state = param.numel * 4 * (1 + states)
    else:
        state = param.numel * size * states
    return weights, 0, weights, state
