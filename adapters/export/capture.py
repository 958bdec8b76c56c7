"""Export the model once, with markers: traced modules bracketed, every other call one op.

For the duration of one non-strict `torch.export.export`, each module to trace gets a forward
that wraps its real one in `enter`/`exit` marker ops, and each module it calls that is not
traced gets a forward that records one `leaf` op instead of running its code under the tracer.
The leaf's result shapes come from running it on the tracer's fake tensors with tracing off
(memoized per module structure and input metadata, so a stack of equal blocks runs once), or,
when its code needs real values (data-dependent routing), from one run on zeros. The batch
dimension of every input is exported as dynamic where the model allows it.
"""

from __future__ import annotations

import functools
import inspect
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
from torch.utils._pytree import tree_map

from adapters.export import ops
from adapters.export.calls import CallRecord, UnsupportedValue, fill, template
from adapters.graph.convert import value_info
from adapters.graph.hooks import HOOK_TABLES, hooks_off
from adapters.graph.memo import MISSING, LeafMemo
from adapters.graph.training_reads import watch_training
from core import PlanError

Progress = Callable[[str], None]


class CaptureError(PlanError):
    """torch.export could not capture a module that must be traced (it is on the way to a cut)."""


@dataclass(frozen=True)
class Captured:
    program: ExportedProgram
    calls: list[CallRecord]
    paths: Mapping[int, str]  # id(module) -> its path in the model
    static_inputs: Mapping[str, tuple[int | None, ...]]  # root input -> sizes export fixed


def capture(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    traced: Mapping[str, nn.Module],
    leaves: Mapping[str, nn.Module],
    progress: Progress | None = None,
) -> Captured:
    """Export `model` on the example inputs with `traced` bracketed and `leaves` opaque."""
    session = _Session(traced, leaves, progress)
    dynamic = _dynamic_batch(model, args, kwargs)
    with session.patched():
        try:
            program = torch.export.export(model, tuple(args), dict(kwargs), dynamic_shapes=dynamic, strict=False)
        except CaptureError:
            raise
        except Exception as err:
            raise session.failure(err) from err
        finally:
            ops.STASHED.clear()
    return Captured(program, session.calls, session.paths, _static_sizes(program))


class _Session:
    def __init__(self, traced: Mapping[str, nn.Module], leaves: Mapping[str, nn.Module], progress: Progress | None) -> None:
        self.traced, self.leaves, self.progress = traced, leaves, progress
        self.paths = {id(m): p for p, m in {**leaves, **traced}.items()}
        self.calls: list[CallRecord] = []
        self.stack: list[CallRecord] = []
        self.memo = LeafMemo(symbolic=True)
        self.bypass = False  # set while a leaf runs for real (its forward must not record)
        self.failed_in: str | None = None  # the traced module whose code raised, if any
        # A leaf's own tensors, kept before export swaps them for fake ones (the zeros fallback).
        self.real = {id(m): {**dict(m.named_parameters()), **dict(m.named_buffers())} for m in leaves.values()}

    @contextmanager
    def patched(self) -> Iterator[None]:
        saved: list[tuple[nn.Module, Any]] = []
        # A leaf's own hooks run in its fake run (they shape its result), never under the tracer.
        self.leaf_hooks = {id(m): m for m in self.leaves.values() if any(getattr(m, t) for t in HOOK_TABLES)}
        self.hook_tables = {id(m): {t: dict(getattr(m, t)) for t in HOOK_TABLES} for m in self.leaf_hooks.values()}
        with hooks_off([*self.traced.values(), *self.leaves.values()]), self._forwards_patched(saved):
            yield

    @contextmanager
    def _forwards_patched(self, saved: list[tuple[nn.Module, Any]]) -> Iterator[None]:
        try:
            for module in self.traced.values():
                saved.append((module, module.__dict__.get("forward", MISSING)))
                module.forward = self._traced_forward(module, module.forward)
            for module in self.leaves.values():
                saved.append((module, module.__dict__.get("forward", MISSING)))
                module.forward = self._leaf_forward(module, module.forward)
            yield
        finally:
            for module, before in reversed(saved):
                if before is MISSING:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = before

    def _record(self, kind: str, module: nn.Module, names: tuple[str, ...]) -> CallRecord:
        caller = self.stack[-1].id if self.stack else None
        record = CallRecord(len(self.calls), kind, module, caller, names=names)  # type: ignore[arg-type]
        self.calls.append(record)
        return record

    def _traced_forward(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        names = _positional_names(forward)

        @functools.wraps(forward)
        def traced(*args: Any, **kwargs: Any) -> Any:
            record = self._record("traced", module, names)
            if self.progress is not None:
                self.progress(self.paths[id(module)] or "<root>")
            tensors: list[torch.Tensor] = []
            record.args, record.kwargs = _template(module, self, (args, kwargs), tensors, "arguments")
            record.arg_infos = _arg_infos(names, args, kwargs)
            if record.caller is None:
                record.unpassed = _unpassed_defaults(forward, args, kwargs)
            inner = ops.enter(record.id, tensors)
            args2, kwargs2 = fill((record.args, record.kwargs), inner)
            self.stack.append(record)
            try:
                with watch_training(module) as reads:
                    result = forward(*args2, **kwargs2)
            except Exception:
                if self.failed_in is None:  # the innermost traced module: where it failed
                    self.failed_in = self.paths[id(module)]
                raise
            finally:
                self.stack.pop()
            if reads:
                record.mode_read = module.training
            outputs: list[torch.Tensor] = []
            record.result = _template(module, self, result, outputs, "result")
            record.result_info = value_info(result)
            record.slot_infos = [value_info(t) for t in outputs]
            return fill(record.result, ops.exit_(record.id, outputs))

        return traced

    def _leaf_forward(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        names = _positional_names(forward)

        @functools.wraps(forward)
        def leaf(*args: Any, **kwargs: Any) -> Any:
            if self.bypass:
                return forward(*args, **kwargs)
            record = self._record("leaf", module, names)
            tensors: list[torch.Tensor] = []
            record.args, record.kwargs = _template(module, self, (args, kwargs), tensors, "arguments")
            result = self._fake_result(record, forward, args, kwargs)
            outputs: list[torch.Tensor] = []
            record.result = _template(module, self, result, outputs, "result")
            record.result_info = value_info(result)
            record.slot_infos = [value_info(t) for t in outputs]
            ops.STASHED[record.id] = outputs
            return fill(record.result, ops.leaf(record.id, tensors))

        return leaf

    def _fake_result(self, record: CallRecord, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = record.module
        # (The memo sees no hooks while they are off: a leaf with hooks is never memoized.)
        key = None if id(module) in self.leaf_hooks else self.memo.key(module, args, kwargs)
        if key is not None and (known := self.memo.get(key)) is not MISSING:
            return known
        shape_env = getattr(torch._guards.detect_fake_mode(), "shape_env", None)
        pending = list(shape_env.pending_fresh_unbacked_symbols) if shape_env is not None else []
        try:
            with disable_proxy_modes_tracing():
                result = self._run_leaf(module, forward, args, kwargs)
        except Exception as err:  # data-dependent code cannot run on fake tensors
            failed: Exception | None = err
        else:
            failed = None
            if key is not None:
                self.memo.put(key, result)
        finally:
            # Sizes made up inside the untraced run never reach the graph: forget them.
            if shape_env is not None:
                shape_env.pending_fresh_unbacked_symbols[:] = pending
        if failed is not None:
            result = self._zeros_result(record, args, kwargs, failed)
        return result

    def _run_leaf(self, module: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The leaf's forward, through its own hooks when it has some."""
        if id(module) not in self.leaf_hooks:
            return forward(*args, **kwargs)
        tables = self.hook_tables[id(module)]
        for name, hooks in tables.items():
            getattr(module, name).update(hooks)
        self.bypass = True
        try:
            return module(*args, **kwargs)
        finally:
            self.bypass = False
            for name in tables:
                getattr(module, name).clear()

    def _zeros_result(self, record: CallRecord, args: tuple[Any, ...], kwargs: dict[str, Any], why: Exception) -> Any:
        """Run the leaf for real on zeros of the example sizes; its result's batch dimension is
        symbolic again where it has the input's batch size."""
        module = record.module
        path = self.paths[id(module)]
        state = self.real[id(module)]
        if any(t.device.type == "meta" for t in state.values()):
            raise CaptureError(
                f"{path}: cannot run on fake tensors ({_reason(why)}) and the model is on the meta "
                "device, so it cannot run on zeros either; build the model on a real device, or "
                "give this module's input and output shapes by making its caller a leaf."
            ) from why
        batch = _batch_sizes((args, kwargs))
        fake_mode = torch._guards.detect_fake_mode((args, kwargs))
        saved = {k: t.detach().clone() for k, t in state.items() if not isinstance(t, nn.Parameter)}
        rng = torch.random.get_rng_state()
        self.bypass = True
        try:
            # No torch.no_grad() here: export would record the grad-mode switch as a region.
            with disable_proxy_modes_tracing(), torch._subclasses.fake_tensor.unset_fake_temporarily():
                real_args = tree_map(_zeros, (args, kwargs))
                result = tree_map(_detached, torch.func.functional_call(module, state, real_args[0], real_args[1]))
        except Exception as err:
            raise CaptureError(f"{path}: cannot run on fake tensors ({_reason(why)}), nor on zeros ({_reason(err)})") from err
        finally:
            self.bypass = False
            torch.random.set_rng_state(rng)
            for k, value in saved.items():
                state[k].data.copy_(value)
        record.note = "shapes from a run on zeros (its code needs real values)"
        assert fake_mode is not None
        return tree_map(lambda v: _refake(fake_mode, v, batch), result)

    def failure(self, err: Exception) -> CaptureError:
        """The error for a failed export, naming the innermost traced module being traced."""
        where = self.failed_in or (self.paths[id(self.stack[-1].module)] if self.stack else "")
        if isinstance(err, UnsupportedValue):
            return CaptureError(str(err))
        return CaptureError(
            f"torch.export could not trace {where or 'the root module'!s}: {_reason(err)}. Fix: keep "
            f"the cuts out of it so it stays a leaf, pass leaf_modules=[...] (--leaf) for the part "
            "that fails, or use tracer='fx'."
        )


def _template(module: nn.Module, session: _Session, value: Any, tensors: list[torch.Tensor], what: str) -> Any:
    try:
        return template(value, tensors)
    except UnsupportedValue as err:
        path = session.paths[id(module)] or "the root module"
        raise UnsupportedValue(
            f"{path}: its {what} hold {err}, which the export frontend cannot follow; make the "
            "module that passes it a leaf (keep cuts out of it)."
        ) from None


def _positional_names(forward: Callable[..., Any]) -> tuple[str, ...]:
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(
        p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def _unpassed_defaults(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters the call left at a default that picks a code path (None, bool, int, str)."""
    try:
        signature = inspect.signature(forward)
        bound = signature.bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in bound.arguments
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and (p.default is None or type(p.default) in (bool, int, str))
    }


def _arg_infos(names: tuple[str, ...], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    infos = {(names[i] if i < len(names) else f"arg{i}"): value_info(a) for i, a in enumerate(args)}
    infos.update((k, value_info(v)) for k, v in kwargs.items())
    return infos


def _dynamic_batch(model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Dim 0 of every input tensor with at least 2 rows is dynamic (export decides: Dim.AUTO)."""

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] >= 2:
            return {0: Dim.AUTO}
        return None

    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    return {name: tree_map(spec, value) for name, value in bound.arguments.items()}


def _static_sizes(program: ExportedProgram) -> dict[str, tuple[int | None, ...]]:
    """Each user input tensor's sizes: an int where export fixed the size, None where dynamic."""
    user = set(program.graph_signature.user_inputs)
    out: dict[str, tuple[int | None, ...]] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user and isinstance(node.meta.get("val"), torch.Tensor):
            out[node.name] = tuple(d if type(d) is int else None for d in node.meta["val"].shape)
    return out


def _batch_sizes(tree: Any) -> dict[int, torch.SymInt]:
    found: dict[int, torch.SymInt] = {}
    for value in torch.utils._pytree.tree_leaves(tree):
        first: Any = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() >= 1 else None
        if isinstance(first, torch.SymInt) and first.node.hint is not None:
            found.setdefault(int(first.node.hint), first)
    return found


def _zeros(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        shape: tuple[Any, ...] = tuple(value.shape)
        sizes = [int(d.node.hint) if isinstance(d, torch.SymInt) else d for d in shape]
        return torch.zeros(sizes, dtype=value.dtype, device=value.device)
    return value


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _refake(mode: Any, value: Any, batch: Mapping[int, torch.SymInt]) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    sizes: list[Any] = list(value.shape)
    if sizes and sizes[0] in batch:
        sizes[0] = batch[sizes[0]]
    with disable_proxy_modes_tracing(), mode:
        return torch.empty(sizes, dtype=value.dtype, device=value.device)


def _reason(err: BaseException) -> str:
    """The error's first line, and where in the model's own code it happened."""
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    where = ""
    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.dirname(__file__))
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if not frame.filename.startswith((torch_dir, here)):
            where = f" at {frame.filename}:{frame.lineno}"
            break
    return f"{type(err).__name__}: {text}{where}"
