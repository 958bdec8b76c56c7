"""`snapshot(model, ...)`: the one entry point, choosing a frontend.

`tracer="fx"` traces with torch.fx (fast, keeps torch-level ops, but most transformers code
defeats it); `tracer="export"` uses torch.export (real models; needs example inputs);
`tracer="auto"` (the default) uses fx when it reaches every module it must trace, and export
otherwise. The snapshot records which one made it (`Snapshot.tracer`).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from torch import nn

from adapters.export.capture import CaptureError
from adapters.export.trace import snapshot_export, spine_targets
from adapters.fx.trace import LeafSpec, snapshot_fx
from adapters.graph.deep import ModelTooDeep, run_deep
from adapters.graph.hooks import hooks_off
from adapters.graph.module_tree import tree_depth, walk_modules
from core import PlanError, Snapshot
from core.cuts import CutLike

Tracer = Literal["auto", "fx", "export"]
TRACERS: tuple[str, ...] = ("auto", "fx", "export")
FX_FAILED = "fx could not trace it"


class UntraceableModel(PlanError):
    """Neither frontend could trace a module that must be traced."""


def snapshot(
    model: nn.Module,
    *example_args: Any,
    tracer: Tracer = "auto",
    leaf_modules: Iterable[LeafSpec] = (),
    cuts: Sequence[CutLike] | None = None,
    progress: Callable[[str], None] | None = None,
    **example_kwargs: Any,
) -> Snapshot:
    """Trace `model` into a `Snapshot`; with example inputs, every value gets its shape and bytes.

    `cuts` traces only the modules on the way to those cuts ("trace by need"); without it, fx
    traces every module it can and export traces the way to the model's numbered blocks.
    """
    if tracer not in TRACERS:
        raise ValueError(f"tracer={tracer!r}: expected one of {', '.join(TRACERS)}")
    if example_args or example_kwargs:
        _check_call(model, example_args, example_kwargs)
    leaves = tuple(leaf_modules)

    def run() -> Snapshot:
        with hooks_off([model]):
            return _snapshot(model, example_args, example_kwargs, tracer, leaves, cuts, progress)

    # The model's forward recurses once per level (fx's binding run, value info, export): with
    # a deep module tree, in a thread with room for it (`ModelTooDeep` if it needs more).
    return run_deep(tree_depth(model), run, what=f"{type(model).__name__}.forward (while tracing)")


def _snapshot(
    model: nn.Module,
    example_args: tuple[Any, ...],
    example_kwargs: dict[str, Any],
    tracer: Tracer,
    leaves: tuple[LeafSpec, ...],
    cuts: Sequence[CutLike] | None,
    progress: Callable[[str], None] | None,
) -> Snapshot:
    if tracer == "export":
        return snapshot_export(model, *example_args, leaf_modules=leaves, cuts=cuts, progress=progress, **example_kwargs)
    traced = snapshot_fx(model, *example_args, leaf_modules=leaves, cuts=cuts, progress=progress, **example_kwargs)
    failed = _fx_failure(traced, spine_targets(dict(walk_modules(model)), cuts))
    if tracer == "fx" or failed is None or not (example_args or example_kwargs):
        return traced
    try:
        return snapshot_export(model, *example_args, leaf_modules=leaves, cuts=cuts, progress=progress, **example_kwargs)
    except CaptureError as err:
        path, why = failed
        if path:
            # The rest of the model is traced: keep fx's snapshot, and let planning name this
            # module (CutInsideLeaf) with both reasons.
            return _with_reason(traced, path, f"{why}; torch.export could not either: {err}")
        raise UntraceableModel(
            f"neither frontend can trace {path or 'the root module'}: fx: {why}; export: {err}"
        ) from err


def _with_reason(snap: Snapshot, path: str, reason: str) -> Snapshot:
    """`snap` with the leaf reason of the module at `path` replaced (rebuilt along the path)."""
    parts = path.split(".")
    chain = [snap.root]
    for part in parts:
        chain.append(chain[-1].children[part])
    module = replace(chain[-1], leaf_reason=reason)
    for parent, part in zip(reversed(chain[:-1]), reversed(parts)):
        module = replace(parent, children=parent.children.set(part, module))
    return Snapshot(module, snap.tracer)


def _check_call(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Example inputs the model does not take are a TypeError, as calling the model is."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"the example inputs do not fit {type(model).__name__}.forward{signature}: {err}") from None


def _fx_failure(snap: Snapshot, targets: Sequence[str]) -> tuple[str, str] | None:
    """The first module fx had to trace but could not: the root, or one above a target (a cut,
    or the numbered blocks when there are no cuts)."""
    needed = [""]
    for target in targets:
        parts = target.split(".")
        needed.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    for path in needed:
        module = snap.modules.get(path)
        if module is not None and module.graph is None and (module.leaf_reason or "").startswith(FX_FAILED):
            return path, module.leaf_reason or ""
    return None


__all__ = ["TRACERS", "ModelTooDeep", "Tracer", "UntraceableModel", "snapshot"]
