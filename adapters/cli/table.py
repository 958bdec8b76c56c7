"""The plan table `stagecut plan` prints: core's table (`core.table`) with the parameter bytes too.

One row per stage: its modules, parameter count, parameter bytes (`StageFigures.param_bytes`,
one count per storage, buffers not counted), bytes received and sent per microbatch, and with
`--stages` the cost that balanced it; bypass values under the row, tied parameters at the end.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from core.plan import Plan
from core.table import WIDTH, compress_paths, human, value_bytes

LEGEND = "in/out: bytes received/sent per microbatch; bypass: received only to be sent on."


def render_table(plan: Plan, costs: Sequence[float] | None = None, cost_label: str = "cost") -> str:
    numbers = [("params", 7), ("param B", 8), ("in", 8), ("out", 8)]
    if costs is not None:
        numbers.append((cost_label[:8], 8))
    mods_width = WIDTH - 7 - sum(w + 1 for _, w in numbers)
    head = f"{'stage':>5}  {'modules':<{mods_width}}" + "".join(f" {t:>{w}}" for t, w in numbers)
    lines = [head, "-" * len(head)]
    for stage in plan.stages:
        fig = stage.figures
        cells = [human(fig.params), human(fig.param_bytes, "B"), human(fig.bytes_in, "B"), human(fig.bytes_out, "B")]
        if costs is not None:
            cells.append(human(costs[stage.index]) if stage.index < len(costs) else "?")
        wrapped = textwrap.wrap(", ".join(compress_paths(stage.modules)), mods_width) or ["-"]
        lines.append(
            f"{stage.index:>5}  {wrapped[0]:<{mods_width}}" + "".join(f" {c:>{w}}" for c, (_, w) in zip(cells, numbers))
        )
        lines.extend(f"{'':>5}  {more}" for more in wrapped[1:])
        if stage.bypass:
            shown = ", ".join(f"{n} ({human(value_bytes(stage, n), 'B')})" for n in stage.bypass)
            lines.extend(textwrap.wrap(f"bypass: {shown}", WIDTH, initial_indent=" " * 7, subsequent_indent=" " * 15))
    lines.append(LEGEND)
    if plan.ties:
        lines += ["", "tied parameters (one storage; kept in sync across stages):"]
        for group in plan.ties:
            members = ", ".join(f"{name} @{stage}" for name, stage in group)
            lines.extend(textwrap.wrap(members, WIDTH - 2, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)
