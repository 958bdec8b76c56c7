"""`plan --stages N --cost params|flops|measured`: automatic cuts from `core.balance`.

`params` and `flops` are core's cost models (`core.costs`); `measured` is a table of each
module's forward + backward time on the example inputs (`adapters.fx.measure`), which core prices
with `core.costs.by_module`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from core.cuts import Cut
from core.snapshot import Snapshot

from adapters.cli.errors import UsageError

COSTS = ("params", "flops", "measured")
# What a stage's cost is, and the factor from core's number to the one shown.
UNITS: Mapping[str, tuple[str, float]] = {
    "params": ("parameter bytes", 1.0),
    "flops": ("forward flops, estimated from shapes", 1.0),
    "measured": ("forward + backward milliseconds, measured on the example inputs", 1000.0),
}


@dataclass(frozen=True, slots=True)
class Balanced:
    cuts: tuple[Cut, ...]
    costs: tuple[float, ...]  # per stage, in the unit shown (UNITS)
    imbalance: float  # max / mean: 1.0 is perfect; the pipeline runs at its slowest stage's pace


def balance(
    snapshot: Snapshot,
    stages: int,
    cost: str,
    measured: Mapping[str, float] | None = None,
    *,
    max_memory: float | None = None,
    training: Any = None,
) -> Balanced:
    """The cuts `core.balance` picks for `stages` stages; `measured` is needed for cost "measured".
    With `max_memory`, every stage's peak memory under `training` (`core.fit.Training`) stays
    under it."""
    balancer, models = _module("core.balance"), _module("core.costs")
    if cost == "measured":
        if measured is None:
            raise UsageError("--cost measured runs the model; it needs --model, not --snapshot")
        model = models.by_module(measured)
    else:
        model = getattr(models, cost)
    if max_memory is None:
        report = balancer.balance_report(snapshot, stages, cost=model)
    else:
        report = balancer.balance_report(snapshot, stages, cost=model, max_memory=max_memory, training=training)
    scale = UNITS[cost][1]
    return Balanced(tuple(report.cuts), tuple(c * scale for c in report.stage_costs), float(report.imbalance))


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise UsageError(
            f"--stages needs automatic balancing ({name}), which this installation of stagecut "
            "does not have; give the stage boundaries with --cut PATH instead"
        ) from err
