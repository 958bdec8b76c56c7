"""The snapshot a command works on: read from `--snapshot FILE`, or traced from `--model`.

Reading a snapshot file never imports torch: that is the path for schedulers that embed the core.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.snapshot import Snapshot

from adapters.cli import files
from adapters.cli.errors import UsageError
from adapters.cli.progress import Progress

if TYPE_CHECKING:
    from adapters.cli.model_source import ModelSource


@dataclass(frozen=True, slots=True)
class Loaded:
    snapshot: Snapshot
    name: str
    description: str
    model: ModelSource | None = None  # None when read from a snapshot file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to plan")
    group.add_argument(
        "--model",
        metavar="SPEC",
        help="a built-in example (gpt, t5, structured, slapo_seq, slapo_list, scalars), "
        "package.module:factory, or path/to/file.py:factory; the factory returns "
        "(model, args) or (model, args, kwargs) (default: gpt with 8 blocks)",
    )
    group.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a keyword argument for the model's factory, e.g. -o n_layers=12 (repeatable)",
    )
    group.add_argument(
        "--leaf", action="append", default=[], metavar="PATH",
        help="keep the module at PATH untraced, as a leaf (repeatable)",
    )
    group.add_argument(
        "--snapshot", metavar="FILE",
        help="work on a snapshot JSON (see docs/snapshot-schema.md) instead of a model; needs no torch",
    )


def load(ns: argparse.Namespace, progress: Progress, cuts: Sequence[str] | None = None) -> Loaded:
    """The snapshot named by the arguments; with `cuts`, only the modules on the way to them are traced."""
    if ns.snapshot is not None:
        if ns.model is not None or ns.option or ns.leaf:
            raise UsageError("--snapshot replaces --model, --option and --leaf; give one or the other")
        snapshot = Snapshot.from_json(files.read_text(ns.snapshot, "snapshot"))
        root = snapshot.root.type_name or "model"
        return Loaded(snapshot, ns.snapshot, f"a {root} read from a snapshot")
    return _trace(ns, progress, cuts)


def _trace(ns: argparse.Namespace, progress: Progress, cuts: Sequence[str] | None) -> Loaded:
    from adapters.cli import model_source

    try:
        progress.status("building the model")
        source = model_source.load(ns.model or model_source.DEFAULT_MODEL, model_source.parse_options(ns.option))
        from adapters.fx import snapshot

        unknown = [p for p in ns.leaf if p not in dict(source.model.named_modules())]
        if unknown:
            raise UsageError(f"--leaf {unknown[0]!r}: the model has no module with this path")
        progress.start("tracing", total=None if cuts is not None else _traceable(source.model))
        snap = snapshot(
            source.model, *source.args, leaf_modules=ns.leaf, cuts=cuts, progress=progress, **source.kwargs
        )
    finally:
        progress.close()
    return Loaded(snap, source.name, source.description, source)


def _traceable(model: object) -> int:
    """About how many modules a full trace visits: all but torch.nn's own (Sequential aside)."""
    from torch import nn

    assert isinstance(model, nn.Module)
    return sum(
        1
        for m in model.modules()
        if not type(m).__module__.startswith("torch.nn") or type(m) is nn.Sequential
    )
