"""`plan --svg/--png`: a bar chart per stage of parameters, bytes in/out and (when known) cost,
and with the figures (`--schedule`, `--max-memory`, ...) peak memory by kind against the cap.

Drawn on a bare matplotlib `Figure` with the Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.plan import Plan
from core.table import human


def save_chart(
    plan: Plan,
    path: Path,
    fmt: str,
    title: str,
    costs: tuple[float, ...] | None = None,
    cost_label: str = "cost",
    figures: Any = None,
    max_memory: float | None = None,
) -> None:
    """Write the chart to `path` in the format `fmt` ("svg" or "png"); `figures` (a
    `core.figures.Figures`) adds peak memory per stage, with `max_memory` drawn as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    stages = [s.index for s in plan.stages]
    panels = 2 + (costs is not None) + (figures is not None)
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
    if figures is not None:
        _memory_panel(axes[-1], figures, max_memory)
    for ax in axes:
        ax.set_xlabel("stage")
        ax.set_xticks(stages)
        ax.yaxis.set_major_formatter(scaled)
    figure.savefig(path, format=fmt)


def _memory_panel(ax: Any, figures: Any, max_memory: float | None) -> None:
    """Stacked bars per stage: weights and optimizer state, receive buffers, activations in
    flight; the cap as a dashed line."""
    stages = [s.index for s in figures.stages]
    weights = [s.memory.weights.total for s in figures.stages]
    buffers = [s.memory.receive_buffers or 0 for s in figures.stages]
    acts = [(s.memory.activations or 0) * s.memory.in_flight for s in figures.stages]
    ax.bar(stages, weights, color="tab:blue", label="weights, grads, optimizer")
    ax.bar(stages, buffers, bottom=weights, color="tab:gray", label="receive buffers")
    ax.bar(stages, acts, bottom=[w + b for w, b in zip(weights, buffers)], color="tab:purple", label="activations in flight")
    if max_memory is not None:
        ax.axhline(max_memory, color="tab:red", linestyle="--", label=f"max memory {human(max_memory, 'B')}")
    ax.set_title(f"peak memory, {figures.schedule} x{figures.microbatches}")
    ax.set_ylim(0, max([w + b + a for w, b, a in zip(weights, buffers, acts)] + [max_memory or 0]) * 1.08 or 1)
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
