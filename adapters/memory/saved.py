"""What autograd saves for backward, measured with `torch.autograd.graph.saved_tensors_hooks`.

- `leaf_saved(model, args, kwargs, snapshot)`: one forward of the whole model (on fake tensors
  by default: no memory, no compute; a model on the meta device works) with a hook on every
  module the snapshot did not trace. For each call of such a module it records which of its
  arguments and results autograd keeps, and the bytes of the tensors it makes and keeps inside:
  the `core.saved.LeafSaved` records that `core.figures` needs for modules its rules cannot see
  into (export's opaque blocks, a model's own layers). Calls inside another untraced module
  belong to the outer one.
- `saved_bytes(fn, *args)`: the bytes of the distinct storages `fn(*args)` leaves saved for
  backward, parameters and buffers of the given modules left out: the measurement the tests
  compare the figures with.

Storages are compared by identity (`StorageWeakRef`), so views of one tensor count once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_map

from core.errors import PlanError
from core.saved import ArgPath, LeafSaved
from core.snapshot import Snapshot

__all__ = ["leaf_saved", "measure_stages", "saved_bytes"]


def _storage(t: torch.Tensor) -> StorageWeakRef:
    return StorageWeakRef(t.untyped_storage())  # type: ignore[no-untyped-call]


def saved_bytes(fn: Callable[..., Any], *args: Any, exclude: Iterable[nn.Module] = (), **kwargs: Any) -> int:
    """Bytes of the distinct storages autograd saves while `fn(*args, **kwargs)` runs, without
    the parameters and buffers of `exclude`. The result is dropped (its graph freed)."""
    skip = {_storage(t) for m in exclude for t in _held_by(m)}
    seen: dict[StorageWeakRef, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage(t)
        if key not in skip:
            seen.setdefault(key, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(seen.values())


def _held_by(module: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and plain tensor attributes (fx's lifted constants) of a module tree."""
    out = [*module.parameters(), *module.buffers()]
    for sub in module.modules():
        out.extend(v for v in vars(sub).values() if isinstance(v, torch.Tensor))
    return out


def leaf_saved(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    snapshot: Snapshot,
    *,
    dtype: torch.dtype | None = None,
    fake: bool | None = None,
) -> dict[str, tuple[LeafSaved, ...]]:
    """Module path -> one `LeafSaved` per call (in call order) of every untraced module of
    `snapshot` that a traced graph calls. With `dtype`, floating parameters and inputs are taken
    in that dtype (the model is not changed). `fake=True` runs on fake tensors, `False` on
    copies of the real ones; `None` (the default) tries fake tensors first and, when the model's
    code needs real values (data-dependent control flow), runs on real ones unless the model is
    on the meta device (then `MeasureError`)."""
    if fake is not None:
        return _leaf_saved(model, args, kwargs, snapshot, dtype, fake)
    try:
        return _leaf_saved(model, args, kwargs, snapshot, dtype, True)
    except Exception as err:
        from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

        if not isinstance(err, (DataDependentOutputException, DynamicOutputShapeException)):
            raise
        if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
            raise MeasureError(
                f"the model's code needs real values ({type(err).__name__}: {err}), but it is on the "
                "meta device, so what it keeps for backward cannot be measured; plan it from real "
                "weights (--model), or give the stages' activations with the figures' `saved=`"
            ) from err
        return _leaf_saved(model, args, kwargs, snapshot, dtype, False)


class MeasureError(PlanError):
    """What a model keeps for backward could not be measured."""


def _leaf_saved(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    snapshot: Snapshot,
    dtype: torch.dtype | None,
    fake: bool,
) -> dict[str, tuple[LeafSaved, ...]]:
    modules = dict(model.named_modules(remove_duplicate=False))
    leaves = {path for path, m in snapshot.modules.items() if m.graph is None and path in modules and path}
    weights: dict[str, torch.Tensor] = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    records: dict[str, list[LeafSaved]] = {}
    with ExitStack() as stack:
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=False)
            convert: Callable[[Any, torch.dtype | None], Any] = lambda v, d: _fake(mode, v, d)  # noqa: E731
        else:
            convert = _cast
        # Parameters and inputs in `dtype`; buffers keep theirs (transformers keeps some in float32).
        state = {name: convert(t, dtype if isinstance(t, nn.Parameter) else None) for name, t in weights.items()}
        for name in trainable:
            if state[name].is_floating_point():
                state[name].requires_grad_(True)
        skip = {_storage(t) for t in state.values() if isinstance(t, torch.Tensor)}
        call_args = tree_map(lambda v: convert(v, dtype), args)
        call_kwargs = tree_map(lambda v: convert(v, dtype), dict(kwargs))
        if fake:
            stack.enter_context(mode)
        recorder = _Recorder(skip, records)
        for path in sorted(leaves):
            module = modules[path]
            stack.enter_context(module.register_forward_pre_hook(recorder.pre(path), with_kwargs=True))
            stack.enter_context(module.register_forward_hook(recorder.post, with_kwargs=True))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t))
        stack.enter_context(torch.enable_grad())
        torch.func.functional_call(model, state, tuple(call_args), call_kwargs, tie_weights=True, strict=False)
    return {path: tuple(found) for path, found in records.items()}


@dataclass
class _Call:
    path: str
    inputs: dict[StorageWeakRef, ArgPath]
    grad_inputs: tuple[ArgPath, ...]
    saved: dict[StorageWeakRef, tuple[int, str]] = field(default_factory=dict)
    all_grad: LeafSaved | None = None


class _Recorder:
    """The hooks of `leaf_saved`: the outermost untraced call running owns what is saved."""

    def __init__(self, skip: set[StorageWeakRef], records: dict[str, list[LeafSaved]]) -> None:
        self.skip = skip
        self.records = records
        self.active: list[_Call | None] = []  # None: a call nested in another untraced call
        self.probing = False

    def pre(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.probing:
                return
            if self.active:
                self.active.append(None)
                return
            inputs: dict[StorageWeakRef, ArgPath] = {}
            grads: list[ArgPath] = []
            floats: list[ArgPath] = []
            for value, where in _flat((args, kwargs)):
                inputs.setdefault(_storage(value), where)
                if value.is_floating_point():
                    floats.append(where)
                    if value.requires_grad:
                        grads.append(where)
            call = _Call(path, inputs, tuple(grads))
            if len(grads) < len(floats):  # as a stage sees it when those arrive from another stage
                call.all_grad = self._probe(module, args, kwargs)
            self.active.append(call)

        return hook

    def _probe(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LeafSaved:
        """The call again, every floating tensor argument needing gradients."""

        def marked(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v.detach().requires_grad_(True)
            return v

        args2, kwargs2 = tree_map(marked, args), tree_map(marked, kwargs)
        inputs: dict[StorageWeakRef, ArgPath] = {}
        for value, where in _flat((args2, kwargs2)):
            inputs.setdefault(_storage(value), where)
        saved: dict[StorageWeakRef, tuple[int, str]] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = _storage(t)
            if key not in self.skip:
                saved.setdefault(key, (t.untyped_storage().nbytes(), _dtype_name(t)))
            return t

        self.probing = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                result = module(*args2, **kwargs2)
        finally:
            self.probing = False
        grads = tuple(where for value, where in _flat((args2, kwargs2)) if value.is_floating_point())
        return _record(inputs, saved, result, grads, None)

    def post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if self.probing:
            return
        call = self.active.pop()
        if call is None:
            return
        record = _record(call.inputs, call.saved, result, call.grad_inputs, call.all_grad)
        self.records.setdefault(call.path, []).append(record)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.active and not self.probing:
            call = next((c for c in self.active if c is not None), None)
            key = _storage(t)
            if call is not None and key not in self.skip:
                call.saved.setdefault(key, (t.untyped_storage().nbytes(), _dtype_name(t)))
        return t


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _flat(value: Any) -> list[tuple[torch.Tensor, ArgPath]]:
    """The tensors in (args, kwargs) with their paths: `(0,)`, `("name", 1)`."""
    args, kwargs = value
    found: list[tuple[torch.Tensor, ArgPath]] = []
    for i, item in enumerate(args):
        _collect(item, (i,), found)
    for key, item in kwargs.items():
        _collect(item, (key,), found)
    return found


def _collect(value: Any, where: ArgPath, found: list[tuple[torch.Tensor, ArgPath]]) -> None:
    if isinstance(value, torch.Tensor):
        found.append((value, where))
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _collect(item, (*where, i), found)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _collect(item, (*where, key), found)


def _record(
    inputs: Mapping[StorageWeakRef, ArgPath],
    saved: Mapping[StorageWeakRef, tuple[int, str]],
    result: Any,
    grads: tuple[ArgPath, ...],
    all_grad: LeafSaved | None,
) -> LeafSaved:
    found: list[tuple[torch.Tensor, ArgPath]] = []
    _collect(result, (), found)
    outputs: dict[StorageWeakRef, ArgPath] = {}
    for tensor, where in found:
        outputs.setdefault(_storage(tensor), where)  # a storage's first path
    kept_in: list[ArgPath] = []
    kept_out: list[ArgPath] = []
    internal: list[tuple[str, int]] = []
    for key, (nbytes, dtype) in saved.items():
        if key in inputs:
            kept_in.append(inputs[key])
        elif key in outputs:
            kept_out.append(outputs[key])
        else:
            internal.append((dtype, nbytes))
    grad_out = tuple(where for value, where in _flat(((result,), {})) if value.requires_grad)
    grad_out = tuple(where[1:] for where in grad_out)  # paths into the result, not into (result,)
    return LeafSaved(tuple(kept_in), tuple(kept_out), tuple(internal), grads, all_grad, grad_out)


def _fake(mode: Any, value: Any, dtype: torch.dtype | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    fake = mode.from_tensor(value.detach())
    if dtype is not None and fake.is_floating_point():
        fake = fake.to(dtype)
    return fake


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach().clone()  # the run may update buffers in place: not the model's
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value


def measure_stages(plan: Any, model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[int]:
    """Run the stages of `plan` in a chain on real inputs, as the engine does (each stage gets
    its own contiguous copy of each tensor it receives, floating ones needing gradients), and
    give each stage's
    `saved_bytes`: the bytes autograd keeps for its backward, parameters and buffers left out."""
    from adapters.engine.inputs import bind_inputs
    from adapters.graph.stages import stage_modules

    modules = stage_modules(plan, model)
    current: Any = list(bind_inputs(plan.stages[0], args, kwargs))
    out = []
    for s, module in enumerate(modules):
        if s:
            current = [_received(v) for v in current]
        result: list[Any] = []
        out.append(saved_bytes(lambda: result.append(module(*current)), exclude=[model, module]))
        current = list(result[0]) if s < len(modules) - 1 else result[0]
    return out


def _received(value: Any) -> Any:
    """What a stage gets from the engine: each tensor in its own (receive) buffer."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone(memory_format=torch.contiguous_format).requires_grad_(value.is_floating_point())
    return value
