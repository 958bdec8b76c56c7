"""`plan --svg/--png`: a bar chart per stage of parameters, bytes in/out and (when known) cost.

Drawn on a bare matplotlib `Figure` with the Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

from pathlib import Path

from core.plan import Plan
from core.table import human


def save_chart(
    plan: Plan,
    path: Path,
    fmt: str,
    title: str,
    costs: tuple[float, ...] | None = None,
    cost_label: str = "cost",
) -> None:
    """Write the chart to `path` in the format `fmt` ("svg" or "png")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    stages = [s.index for s in plan.stages]
    panels = 3 if costs is not None else 2
    figure = Figure(figsize=(3.2 * panels + 1, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    figure.suptitle(title)
    scaled = FuncFormatter(lambda value, _: human(value))

    params = axes[0]
    params.bar(stages, [s.figures.params for s in plan.stages], color="tab:blue")
    params.set_title("parameters")

    traffic = axes[1]
    width = 0.4
    received = [s.figures.bytes_in or 0 for s in plan.stages]
    sent = [s.figures.bytes_out or 0 for s in plan.stages]
    traffic.bar([i - width / 2 for i in stages], received, width, label="in", color="tab:green")
    traffic.bar([i + width / 2 for i in stages], sent, width, label="out", color="tab:orange")
    traffic.set_title("bytes per microbatch")
    traffic.legend()

    if costs is not None:
        axes[2].bar(stages, costs, color="tab:red")
        axes[2].set_title(cost_label)
    for ax in axes:
        ax.set_xlabel("stage")
        ax.set_xticks(stages)
        ax.yaxis.set_major_formatter(scaled)
    figure.savefig(path, format=fmt)
