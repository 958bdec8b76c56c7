"""`snapshot_export(model, *args, cuts=...)`: a `Snapshot` through torch.export.

Only the modules on the way to a cut are traced; every module they call stays one opaque call
(`capture`), so the cost follows the spine, not the model. Without cuts, the spine leads to
the model's numbered blocks (the stack a pipeline cuts between), which stay opaque: enough for
`core.balance` and `stagecut inspect`, at the cost of one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from adapters.export.capture import CaptureError, capture
from adapters.export.regroup import RegroupError, regroup
from adapters.graph.module_tree import NOT_ON_SPINE, module_tree
from core import Snapshot
from core.cuts import CutLike, as_cut

LeafSpec = type[nn.Module] | str
Progress = Callable[[str], None]

LISTED = "listed in leaf_modules"
OPAQUE = "kept whole: no cut lies inside it (export records it as one call)"
CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def snapshot_export(
    model: nn.Module,
    *example_args: Any,
    leaf_modules: Iterable[LeafSpec] = (),
    cuts: Sequence[CutLike] | None = None,
    progress: Progress | None = None,
    **example_kwargs: Any,
) -> Snapshot:
    """Export `model` on the example inputs into a `Snapshot` (tracer "export")."""
    if not example_args and not example_kwargs:
        raise CaptureError("the export frontend needs example inputs: snapshot(model, *args, **kwargs).")
    modules = dict(model.named_modules())
    listed = tuple(leaf_modules)
    wanted = spine_targets(modules, cuts)
    traced = _traced(modules, wanted, listed)
    leaves = _called_leaves(modules, traced)
    captured = capture(model, example_args, example_kwargs, traced, leaves, progress)
    try:
        graphs = regroup(captured.program, captured.calls, captured.paths, model)
    except RegroupError as err:
        raise CaptureError(str(err)) from err
    reasons = {path: (LISTED if _listed(path, m, listed) else (NOT_ON_SPINE if cuts is not None else OPAQUE)) for path, m in leaves.items()}
    for record in captured.calls:
        if record.note is not None:
            path = captured.paths[id(record.module)]
            reasons[path] = f"{reasons.get(path, OPAQUE)}; {record.note}"
    return Snapshot(module_tree(model, graphs, reasons, by_need=True), "export")


def spine_targets(modules: Mapping[str, nn.Module], cuts: Sequence[CutLike] | None) -> list[str]:
    """The paths the spine must reach: the cuts, or the numbered blocks without cuts."""
    if cuts is not None:
        return [as_cut(c).path for c in cuts]
    stacks = [(p, m) for p, m in modules.items() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2]
    if not stacks:
        return []
    sizes = {p: sum(t.numel() for t in m.parameters()) for p, m in stacks}
    largest = max(sizes.values())
    chosen = [p for p, size in sizes.items() if size * 2 >= largest]  # an encoder's and a decoder's
    return [f"{p}.0" if p else "0" for p in chosen]


def _traced(modules: Mapping[str, nn.Module], wanted: Sequence[str], listed: Sequence[LeafSpec]) -> dict[str, nn.Module]:
    """The root and every called module strictly above a wanted path (containers are not called)."""
    traced = {"": modules[""]}
    for path in wanted:
        parts = path.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            module = modules.get(prefix)
            if module is None or isinstance(module, CONTAINERS) or _listed(prefix, module, listed):
                continue
            traced[prefix] = module
    # A traced module must be reached through traced callers: stop below an untraced one.
    return {p: m for p, m in traced.items() if all(_ancestor_ok(p, i, traced, modules) for i in range(p.count(".") + 1))}


def _ancestor_ok(path: str, depth: int, traced: Mapping[str, nn.Module], modules: Mapping[str, nn.Module]) -> bool:
    if not path:
        return True
    prefix = ".".join(path.split(".")[:depth])
    return prefix == "" or prefix in traced or isinstance(modules.get(prefix), CONTAINERS)


def _called_leaves(modules: Mapping[str, nn.Module], traced: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The modules a traced module may call that are not traced themselves (through containers)."""
    leaves: dict[str, nn.Module] = {}
    traced_ids = {id(m) for m in traced.values()}
    seen: set[int] = set()
    for path, module in traced.items():
        stack = [(f"{path}.{name}" if path else name, child) for name, child in module.named_children()]
        while stack:
            child_path, child = stack.pop()
            if id(child) in traced_ids or id(child) in seen:
                continue
            seen.add(id(child))
            if isinstance(child, CONTAINERS):
                stack.extend((f"{child_path}.{n}", c) for n, c in child.named_children())
            else:
                leaves[child_path] = child
    return leaves


def _listed(path: str, module: nn.Module, listed: Sequence[LeafSpec]) -> bool:
    return any(leaf == path or (isinstance(leaf, type) and isinstance(module, leaf)) for leaf in listed)
