"""The plan as a table readable on an 80-column terminal."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.plan import Plan, Stage

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
WIDTH = 78  # leaves a margin on an 80-column terminal


def compress_paths(paths: Iterable[str]) -> list[str]:
    """`["l.0", "l.1", "l.2", "head"]` -> `["l.0-2", "head"]`: consecutive numbers become ranges."""
    out: list[str] = []
    run: tuple[str, int, int] | None = None  # (prefix, first, last)
    for path in paths:
        match = _NUMBERED.match(path)
        if match and run and match.group(1) == run[0] and int(match.group(2)) == run[2] + 1:
            run = (run[0], run[1], run[2] + 1)
            continue
        if run:
            out.append(_show_run(run))
        run = (match.group(1), int(match.group(2)), int(match.group(2))) if match else None
        if not match:
            out.append(path)
    if run:
        out.append(_show_run(run))
    return out


def _show_run(run: tuple[str, int, int]) -> str:
    prefix, first, last = run
    return f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}"


def human(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.2M'; 0.25 -> '0.25'; None -> '?'."""
    if n is None:
        return "?"
    for scale, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}{unit}"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:.3g}{unit}"
    return f"{int(n)}{unit}"


def value_bytes(stage: Stage, name: str) -> int | None:
    """Bytes of the value `name` that `stage` receives or sends, if its value info is known."""
    info = stage.graph.node(name).info if name in stage.graph else None
    return None if info is None else info.nbytes


def render_table(plan: Plan, costs: Sequence[float] | None = None, cost_label: str = "cost") -> str:
    """One row per stage (modules, parameters, bytes in/out per microbatch, optional cost),
    its bypass values under it, then the tie groups."""
    numbers = [("params", 7), ("in", 8), ("out", 8)] + ([(cost_label[:8], 8)] if costs is not None else [])
    mods_width = WIDTH - 7 - sum(w + 1 for _, w in numbers)
    head = f"{'stage':>5}  {'modules':<{mods_width}}" + "".join(f" {t:>{w}}" for t, w in numbers)
    lines = [head, "-" * len(head)]
    for stage in plan.stages:
        fig = stage.figures
        cells = [human(fig.params), human(fig.bytes_in, "B"), human(fig.bytes_out, "B")]
        if costs is not None:
            cells.append(human(costs[stage.index]) if stage.index < len(costs) else "?")
        wrapped = textwrap.wrap(", ".join(compress_paths(stage.modules)), mods_width) or ["-"]
        lines.append(
            f"{stage.index:>5}  {wrapped[0]:<{mods_width}}"
            + "".join(f" {c:>{w}}" for c, (_, w) in zip(cells, numbers))
        )
        lines.extend(f"{'':>5}  {more}" for more in wrapped[1:])
        if stage.bypass:
            shown = ", ".join(f"{n} ({human(value_bytes(stage, n), 'B')})" for n in stage.bypass)
            lines.extend(textwrap.wrap(f"bypass: {shown}", WIDTH, initial_indent=" " * 7, subsequent_indent=" " * 15))
    lines.append("in/out: bytes received/sent per microbatch; bypass: received only to be sent on.")
    if plan.ties:
        lines.append("")
        lines.append("tied parameters (one storage; kept in sync across stages):")
        for group in plan.ties:
            members = ", ".join(f"{name} @{stage}" for name, stage in group)
            lines.extend(textwrap.wrap(members, WIDTH - 2, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)
