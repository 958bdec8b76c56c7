"""The plan as a table readable on an 80-column terminal."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.plan import Plan

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


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


def human(n: int | None, unit: str = "") -> str:
    """1234567 -> '1.2M'; None -> '?'."""
    if n is None:
        return "?"
    for scale, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}{unit}"
    return f"{n}{unit}"


def render_table(plan: Plan) -> str:
    head = f"{'stage':>5}  {'modules':<34} {'params':>7} {'in':>7} {'out':>7} {'bypass':>6}"
    lines = [head, "-" * len(head)]
    for stage in plan.stages:
        mods = ", ".join(compress_paths(stage.modules)) or "-"
        wrapped = textwrap.wrap(mods, 34) or ["-"]
        fig = stage.figures
        lines.append(
            f"{stage.index:>5}  {wrapped[0]:<34} {human(fig.params):>7} {human(fig.bytes_in, 'B'):>7} "
            f"{human(fig.bytes_out, 'B'):>7} {len(stage.bypass):>6}"
        )
        lines.extend(f"{'':>5}  {more}" for more in wrapped[1:])
    if plan.ties:
        lines.append("")
        lines.append("tied parameters (one storage; kept in sync across stages):")
        for group in plan.ties:
            members = ", ".join(f"{name} @{stage}" for name, stage in group)
            lines.extend(textwrap.wrap(members, 76, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)
