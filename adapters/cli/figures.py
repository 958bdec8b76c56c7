"""`stagecut plan --schedule/--microbatches/--optimizer/--dtype/--bandwidth/--max-memory`:
will it fit, how fast (`core.figures`), as a second table under the plan.

Activations: core derives what each stage keeps for backward from its graph with the ops'
rules; modules the snapshot did not trace (export keeps blocks whole) are measured once with
`saved_tensors_hooks` on fake tensors (`adapters.memory.leaf_saved`) when the model is at
hand (`--model`, `--hf-config`). From `--snapshot` such modules are priced by assumption, and
the output says which.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from core.figures import Figures, figures, stage_seconds
from core.fit import Training
from core.memory import DTYPES, OPTIMIZERS
from core.plan import Plan
from core.saved import has_module_rule
from core.schedules import SCHEDULES
from core.snapshot import Snapshot
from core.table import WIDTH, human

from adapters.cli.errors import UsageError

_UNITS = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*(/s)?\s*$")

OPTIONS = ("schedule", "microbatches", "ranks", "optimizer", "dtype", "bandwidth", "max_memory")


def size(text: str, what: str = "--max-memory") -> float:
    """`"80GB"`, `"80 GiB"`, `"25GB/s"`, `"1e9"` -> bytes (decimal kB/MB/GB/TB, binary KiB...)."""
    found = _SIZE.match(text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _UNITS:
        raise UsageError(f"{what} {text!r}: give bytes with a unit, such as 80GB, 80GiB or 25GB/s")
    value = float(found.group(1)) * _UNITS[unit]
    if not value > 0:
        raise UsageError(f"{what} {text!r}: it must be more than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "will it fit, how fast (any of these adds the memory, traffic and time figures)"
    )
    group.add_argument("--schedule", choices=SCHEDULES, help="the pipeline schedule (default: 1f1b)")
    group.add_argument("--microbatches", type=int, metavar="M", help="microbatches per step (default: 4, at least the stage count)")
    group.add_argument("--ranks", type=int, metavar="P", help="processes (default: one per stage for gpipe and 1f1b, else half the stages)")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer state per parameter (default: adam)")
    group.add_argument("--dtype", choices=DTYPES, help="training dtype; 16-bit means float32 master weights and state (default: the model's)")
    group.add_argument("--bandwidth", metavar="RATE", help="bytes per second between ranks, e.g. 25GB/s (adds transfer times)")
    group.add_argument("--max-memory", metavar="SIZE", help="memory per device, e.g. 80GB: --stages keeps every stage under it; the figures and chart check it")


def wanted(ns: argparse.Namespace) -> bool:
    return any(getattr(ns, name, None) is not None for name in OPTIONS)


def training(ns: argparse.Namespace, stages: int) -> Training:
    kind = ns.schedule or "1f1b"
    mbs = ns.microbatches if ns.microbatches is not None else max(4, stages)
    if mbs < 1:
        raise UsageError(f"--microbatches {mbs}: give 1 or more")
    if ns.ranks is not None and ns.ranks < 1:
        raise UsageError(f"--ranks {ns.ranks}: give 1 or more")
    return Training(kind, mbs, ns.optimizer or "adam", ns.dtype, ns.ranks)


def measure_leaves(model: Any, snapshot: Snapshot, dtype: str | None) -> Mapping[str, Any] | None:
    """`leaf_saved` records of the untraced modules that are not torch.nn built-ins (core's rules
    cover those), or None when there are none."""
    own = [p for p, m in snapshot.modules.items() if m.graph is None and p and m.type_name and not has_module_rule(m.type_name)]
    if not own or model is None:
        return None
    import torch

    from adapters.memory import leaf_saved

    return leaf_saved(model.model, tuple(model.args), dict(model.kwargs), snapshot,
                      dtype=None if dtype is None else getattr(torch, dtype))


def compute(
    ns: argparse.Namespace,
    planned: Plan,
    snapshot: Snapshot,
    train: Training,
    seconds: tuple[Mapping[str, float], Mapping[str, float]] | None,
) -> Figures:
    bandwidth = size(ns.bandwidth, "--bandwidth") if ns.bandwidth is not None else None
    fwd: Sequence[float] | None = None
    bwd: Sequence[float] | None = None
    if seconds is not None:
        fwd, bwd = stage_seconds(planned, seconds[0], seconds[1])
    return figures(
        planned, snapshot, schedule=train.schedule, microbatches=train.microbatches,
        optimizer=train.optimizer, dtype=train.dtype, ranks=train.ranks, bandwidth=bandwidth,
        forward=fwd, backward=bwd, measured=train.measured,
    )


def render(found: Figures, max_memory: float | None = None) -> str:
    """The figures table: one row per stage, then the step and the checks."""
    numbers = [("rank", 4), ("weights", 8), ("recv buf", 8), ("act/mb", 8), ("flight", 6), ("peak", 8), ("sent", 8), ("direct", 8)]
    head = f"{'stage':>5}" + "".join(f" {t:>{w}}" for t, w in numbers)
    dtype = found.dtype or "the model's dtype"
    lines = textwrap.wrap(
        f"memory and traffic: {found.schedule}, {found.microbatches} microbatches on {found.ranks} "
        f"ranks, {found.optimizer}, {dtype}",
        WIDTH,
    )
    lines += [head, "-" * len(head)]
    over = []
    for s in found.stages:
        mem = s.memory
        cells = [
            str(s.rank), human(mem.weights.total, "B"), human(mem.receive_buffers, "B"),
            human(mem.activations, "B"), str(mem.in_flight), human(mem.peak, "B"),
            human(s.comm.send_hops, "B"), human(s.comm.send_direct, "B"),
        ]
        mark = ""
        if max_memory is not None and mem.peak is not None and mem.peak > max_memory:
            mark = "  over"
            over.append(s.index)
        lines.append(f"{s.index:>5}" + "".join(f" {c:>{w}}" for c, (_, w) in zip(cells, numbers)) + mark)
    lines += textwrap.wrap(
        "weights: parameters, buffers, gradients and optimizer state; recv buf: the engine's "
        "receive buffers, one per microbatch; act/mb: kept until the backward, per microbatch in "
        "flight; peak = weights + recv buf + flight x act/mb; sent: bytes per step hop by hop "
        "(activations and gradients), direct: if each value went straight to its readers.",
        WIDTH,
    )
    lines.append("")
    if found.ranks < len(found.stages):
        peaks = ", ".join(f"{r}: {human(p, 'B')}" for r, p in enumerate(found.rank_peaks))
        lines += textwrap.wrap(f"peak per rank (its stages together): {peaks}", WIDTH)
    hops = _total([s.comm.send_hops for s in found.stages])
    direct = _total([s.comm.send_direct for s in found.stages])
    forwarded = _total([s.comm.forwarded for s in found.stages])
    if hops is not None and direct is not None:
        lines += textwrap.wrap(
            f"traffic per step: {human(hops, 'B')} hop by hop, {human(direct, 'B')} direct; "
            f"values received only to be sent on (skip connections): {human(forwarded, 'B')}",
            WIDTH,
        )
    time = f"bubble: {found.bubble:.1%} of ranks x step with equal stages"
    if found.timeline is not None:
        time += (
            f"; predicted step {duration(found.timeline.step)} with the measured costs"
            f" (bubble {found.timeline.bubble:.1%})"
        )
    if found.comm_seconds is not None and found.bandwidth is not None:
        time += f"; transfers {duration(found.comm_seconds)} per step at {human(found.bandwidth, 'B')}/s"
    lines += textwrap.wrap(time, WIDTH)
    if max_memory is not None:
        if any(s.memory.peak is None for s in found.stages):
            lines.append(f"max memory {human(max_memory, 'B')}: unknown (value info missing)")
        elif over:
            lines.append(
                f"max memory {human(max_memory, 'B')}: stage{'s' if len(over) > 1 else ''} "
                f"{', '.join(map(str, over))} do{'' if len(over) > 1 else 'es'} not fit"
            )
        else:
            lines.append(f"max memory {human(max_memory, 'B')}: every stage fits")
    if found.assumed:
        lines += textwrap.wrap(
            "activations assumed (no rule, not measured: taken to keep their inputs): "
            + ", ".join(found.assumed),
            WIDTH,
        )
    why = next((s.saved.why for s in found.stages if s.saved.why), None)
    if why:
        lines += textwrap.wrap(f"activations unknown: {why}", WIDTH)
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """3.15 s, 12.3 ms, 450 us."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _total(values: Sequence[int | None]) -> int | None:
    if any(v is None for v in values):
        return None
    return sum(v or 0 for v in values)
