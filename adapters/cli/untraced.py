"""Why a module was not traced, as the command line tells it; torch-free.

The frontends give an untraced module one of three kinds of reason: a failure ("fx could
not trace it: ...", "torch.export could not trace ..."), a leaf by choice (a torch.nn
module, `--leaf`, kept whole by export), or a generic one for the modules they never
reached ("not traced: snapshot(cuts=...) traces only the modules on the way to a cut",
"never called by a traced module"). A generic reason under a module that failed is
misleading: the module was not reached because the one above it failed. These helpers
find where tracing stopped, so `inspect` and `plan` can name it.
"""

from __future__ import annotations

from core.errors import CutInsideLeaf
from core.snapshot import Module, Snapshot

from adapters.cli.errors import UsageError

# Prefixes of the reasons the frontends give (adapters/graph/module_tree.py, adapters/fx/trace.py,
# adapters/export/capture.py); tests/test_cli_hf.py checks that they still match.
GENERIC = ("not traced: snapshot(cuts=...)", "never called by a traced module")
FAILED = ("fx could not trace it", "torch.export could not trace")
UNDER_FAILED = "not traced: its caller (a module above it) could not be traced"
UNDER_LEAF = "not traced: inside a leaf"


def is_generic(reason: str | None) -> bool:
    return reason is not None and reason.startswith(GENERIC)


def is_failure(reason: str | None) -> bool:
    return reason is not None and reason.startswith(FAILED)


def parent(path: str) -> str | None:
    return None if not path else path.rpartition(".")[0]


def stopped_at(snapshot: Snapshot, path: str) -> Module | None:
    """Where tracing stopped above `path`: the outermost module above it, not a container, with
    only untraced modules between them; None when `path`'s parent is traced.

    That module was called by a traced one (or is the root), so its reason is the real one: the
    modules below it were not reached because of it, whatever reason they were given."""
    found: Module | None = None
    above = parent(path)
    while above is not None:
        module = snapshot.modules[above]
        if module.graph is not None:
            break
        if module.leaf_reason is not None:
            found = module
        above = parent(above)
    return found


def shown_reason(snapshot: Snapshot, module: Module) -> str | None:
    """`module.leaf_reason`, or for a generic one under a module that failed or is a leaf, why really."""
    reason = module.leaf_reason
    if module.graph is not None or not is_generic(reason):
        return reason
    above = stopped_at(snapshot, module.path)
    if above is None:
        return reason
    return UNDER_FAILED if is_failure(above.leaf_reason) else UNDER_LEAF


def check_root(snapshot: Snapshot) -> None:
    """A `UsageError` when the root module has no graph: nothing in it can be planned."""
    root = snapshot.root
    if root.graph is not None:
        return
    why = root.leaf_reason or "no reason recorded"
    if snapshot.tracer == "fx":
        fix = "try --tracer export (or auto, the default)"
    elif snapshot.tracer == "export":
        fix = "try --tracer fx"
    else:
        fix = "trace the model again, with --tracer export or fx"
    kind = f" ({root.type_name})" if root.type_name else ""
    raise UsageError(f"the root module{kind} could not be traced, so there is nothing to cut: {why}; {fix}")


def blame(snapshot: Snapshot, err: CutInsideLeaf) -> CutInsideLeaf:
    """`err`, or when it names a module that is untraced only because tracing stopped above it
    (at a module that failed, or a leaf), the same error naming that module and its reason.

    core (`core.validate`) names the innermost untraced module above the cut with a reason, which
    is often a generic one ("never called by a traced module") of a module that was never reached.
    """
    above = stopped_at(snapshot, err.leaf) if err.leaf in snapshot.modules else None
    if above is None or not above.path:  # the root: `check_root` says it better
        return err
    better = CutInsideLeaf(err.path, above.path, above.leaf_reason)
    better.__cause__ = err
    return better
