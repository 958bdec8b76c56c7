"""The snapshot a command works on: read from `--snapshot FILE`, or traced from `--model`.

Reading a snapshot file never imports torch: that is the path for schedulers that embed the core.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import PlanError
from core.snapshot import Snapshot

from adapters.cli import files, untraced
from adapters.cli.errors import UsageError
from adapters.cli.progress import Progress

if TYPE_CHECKING:
    from adapters.cli.model_source import ModelSource


TRACERS = ("auto", "fx", "export")  # adapters.frontend.TRACERS, without importing torch


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
        "--hf-config", metavar="FILE",
        help="a Hugging Face transformers config.json (or its folder): the model built on the meta device, "
        "no memory for weights (needs transformers: pip install 'stagecut[hf]'); -o batch=N -o seq=N shape its inputs",
    )
    group.add_argument(
        "--snapshot", metavar="FILE",
        help="work on a snapshot JSON (see docs/snapshot-schema.md) instead of a model; needs no torch",
    )
    group.add_argument(
        "--tracer", choices=TRACERS,
        help="how to trace the model: fx, export (torch.export), or auto: fx where it reaches every module "
        "it must trace, export otherwise (default: auto)",
    )


def load(ns: argparse.Namespace, progress: Progress, cuts: Sequence[str] | None = None) -> Loaded:
    """The snapshot named by the arguments; with `cuts`, only the modules on the way to them are traced.

    A snapshot whose root module has no graph is a `UsageError`: nothing in it can be cut.
    """
    if ns.snapshot is not None:
        if ns.model is not None or ns.hf_config is not None or ns.option or ns.leaf or ns.tracer is not None:
            raise UsageError("--snapshot replaces --model, --hf-config, --option, --leaf and --tracer; give one or the other")
        snapshot = Snapshot.from_json(files.read_text(ns.snapshot, "snapshot"))
        root = snapshot.root.type_name or "model"
        loaded = Loaded(snapshot, ns.snapshot, f"a {root} read from a snapshot")
    else:
        if ns.hf_config is not None and ns.model is not None:
            raise UsageError("--hf-config and --model both name the model; give one or the other")
        loaded = _trace(ns, progress, cuts)
    untraced.check_root(loaded.snapshot)
    return loaded


def _trace(ns: argparse.Namespace, progress: Progress, cuts: Sequence[str] | None) -> Loaded:
    from adapters.cli import model_source

    try:
        progress.status("building the model")
        options = model_source.parse_options(ns.option)
        if ns.hf_config is not None:
            from adapters.cli import hf_config

            source = hf_config.load(ns.hf_config, options)
        else:
            source = model_source.load(ns.model or model_source.DEFAULT_MODEL, options)
        from adapters.fx import snapshot

        unknown = [p for p in ns.leaf if p not in dict(source.model.named_modules())]
        if unknown:
            raise UsageError(f"--leaf {unknown[0]!r}: the model has no module with this path")
        counted = cuts is None and ns.tracer in (None, "auto", "fx")  # the fx count; export traces fewer
        if ns.tracer == "export":
            progress.status(_EXPORTING)
        else:
            progress.start("tracing", total=_traceable(source.model) if counted else None)
        with _quiet_torch():
            snap = snapshot(
                source.model, *source.args, tracer=ns.tracer or "auto", leaf_modules=ns.leaf, cuts=cuts,
                progress=_Phases(progress, ns.tracer == "export"), **source.kwargs,
            )
    finally:
        progress.close()
    return Loaded(snap, source.name, source.description, source)


_EXPORTING = "tracing with export"


class _Phases:
    """Passes each module fx traces on to the progress line. When the root comes a second time,
    fx has given up and export has started (auto), which the line then says: export reports
    only the few modules it traces, while its time goes to running the leaves on fake tensors,
    so it gets no count."""

    def __init__(self, progress: Progress, exporting: bool) -> None:
        self.progress = progress
        self.exporting = exporting
        self.roots = 0

    def __call__(self, path: str) -> None:
        if self.exporting:
            return
        if path == "<root>":
            self.roots += 1
            if self.roots == 2:
                self.exporting = True
                self.progress.status(_EXPORTING)
                return
        self.progress(path)


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """Stderr kept to the progress line and one-line errors while tracing: torch's own warnings
    off, and what is printed to stderr meanwhile held back, then shown unless the trace failed
    with a planning error (torch.export prints the partial graph of a failed export; the error
    says what failed). The progress bar writes to the stream it was given, not held back."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    held = io.StringIO()
    failed = False
    try:
        with redirect_stderr(held):
            yield
    except (PlanError, UsageError):
        failed = True
        raise
    finally:
        logger.setLevel(level)
        if not failed and held.getvalue():
            sys.stderr.write(held.getvalue())


def _traceable(model: object) -> int:
    """About how many modules a full trace visits: all but torch.nn's own (Sequential aside)."""
    from torch import nn

    assert isinstance(model, nn.Module)
    return sum(
        1
        for m in model.modules()
        if not type(m).__module__.startswith("torch.nn") or type(m) is nn.Sequential
    )
