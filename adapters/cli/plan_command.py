"""`stagecut plan`: cut a model (or a snapshot) into stages and show the plan."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from core.cuts import CutLike
from core.dot import render_dot
from core.errors import CutInsideLeaf
from core.fit import Training
from core.plan import Plan, plan
from core.snapshot import Snapshot
from core.table import human

from adapters.cli import balancing, files, snapshot_source, untraced
from adapters.cli import figures as fit
from adapters.cli.default_cuts import DEFAULT_STAGES, equal_blocks
from adapters.cli.errors import UsageError
from adapters.cli.progress import Progress
from adapters.cli.table import render_table

DESCRIPTION = f"""\
Cut a model into pipeline stages and print the plan: one row per stage with its
modules, parameters (count and bytes), bytes received and sent per microbatch, and
bypass values.
With no cuts, the model's numbered blocks are cut into {DEFAULT_STAGES} equal groups.
"""


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("plan", help="cut a model into stages and show the plan", description=DESCRIPTION)
    snapshot_source.add_arguments(parser)
    cuts = parser.add_argument_group("where to cut")
    cuts.add_argument(
        "--cut", action="append", default=[], metavar="PATH",
        help="a stage boundary after the module at PATH, or before it with before:PATH (repeatable)",
    )
    cuts.add_argument("--stages", type=int, metavar="N", help="cut automatically into N balanced stages (core.balance)")
    cuts.add_argument("--cost", choices=balancing.COSTS, help="what --stages balances (default: params)")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=("table", "json"), default="table", help="what to print (default: table)")
    out.add_argument("--json", metavar="FILE", help="write the plan as JSON (Plan.from_json reads it back)")
    out.add_argument("--dot", metavar="FILE", help="write the plan as a Graphviz DOT graph")
    out.add_argument("--svg", metavar="FILE", help="write a bar chart of the stages as SVG")
    out.add_argument("--png", metavar="FILE", help="write a bar chart of the stages as PNG")
    out.add_argument("--save-snapshot", metavar="FILE", help="write the model's snapshot JSON (for --snapshot)")
    fit.add_arguments(parser)
    parser.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    if ns.stages is not None and ns.cut:
        raise UsageError("--stages and --cut both choose the cuts; give one or the other")
    if ns.cost is not None and ns.stages is None and not (ns.cost == "measured" and fit.wanted(ns)):
        raise UsageError("--cost says what --stages balances (or, measured, what prices the step time); give --stages N too")
    if ns.cost == "measured" and getattr(ns, "hf_config", None) is not None:
        raise UsageError("--cost measured runs the model, which --hf-config builds on the meta device (no data); "
                         "use --cost params or flops")
    # Explicit cuts need only the modules on their way traced, unless the snapshot is kept.
    by_need = ns.cut if ns.cut and ns.save_snapshot is None else None
    max_memory = fit.size(ns.max_memory) if ns.max_memory is not None else None
    loaded = snapshot_source.load(ns, Progress(), by_need)
    if ns.save_snapshot is not None:
        files.write_text(ns.save_snapshot, "snapshot", loaded.snapshot.to_json())
    cost = ns.cost or "params"
    train = None
    if fit.wanted(ns):
        train = fit.training(ns, ns.stages or 0)
        measured = fit.measure_leaves(loaded.model, loaded.snapshot, train.dtype)
        train = dataclasses.replace(train, measured=measured)
    total = _measure(loaded) if cost == "measured" else None
    cuts, why, balanced = _choose_cuts(ns, loaded, cost, max_memory, train, total)
    result = _plan(loaded.snapshot, cuts)
    costs = None if balanced is None else balanced.costs
    found = None
    if train is not None:
        if ns.microbatches is None:
            train = dataclasses.replace(train, microbatches=max(4, len(result.stages)))
        seconds = _forward_and_total(loaded, total) if total is not None else None
        found = fit.compute(ns, result, loaded.snapshot, train, seconds)
    plan_json = result.to_json() if found is None else _with_figures(result, found)

    if ns.format == "json":
        print(plan_json)
    else:
        shown = ", ".join(str(c) for c in result.cuts) or "none"
        print(f"{loaded.name}: {loaded.description}")
        traced = f"traced with {result.tracer}; " if result.tracer else ""
        print(textwrap.fill(f"{traced}cuts: {shown} ({why})", 78, subsequent_indent="  "))
        print()
        print(render_table(result) if costs is None else render_table(result, costs))
        if balanced is not None:
            print(f"\ncost: {balancing.UNITS[cost][0]}; imbalance (max/mean): {balanced.imbalance:.3f}")
        if found is not None:
            print()
            print(fit.render(found, max_memory))
    sys.stdout.flush()  # the table first, then the "wrote ..." lines on stderr

    title = f"{loaded.name}: {len(result.stages)} stages"
    if ns.json is not None:
        files.write_text(ns.json, "plan", plan_json)
    if ns.dot is not None:
        files.write_text(ns.dot, "DOT graph", render_dot(result, title))
    for fmt, path in (("svg", ns.svg), ("png", ns.png)):
        if path is not None:
            from adapters.cli.chart import save_chart

            files.write(path, "chart", lambda p: save_chart(result, p, fmt, title, costs, f"cost ({cost})", found, max_memory))
    return 0


def _with_figures(result: Plan, found: Any) -> str:
    """The plan JSON with the figures under "training" (`Plan.from_json` reads past them)."""
    doc = json.loads(result.to_json())
    doc["training"] = found.to_dict()
    return json.dumps(doc, allow_nan=False)


def _forward_and_total(loaded: snapshot_source.Loaded, total: dict[str, float]) -> tuple[dict[str, float], dict[str, float]] | None:
    """Forward, and forward + backward, seconds per module measured on the example inputs."""
    if loaded.model is None:
        return None
    from adapters.fx.measure import module_seconds

    source = loaded.model
    return module_seconds(source.model, source.args, source.kwargs, backward=False), total


def _plan(snapshot: Snapshot, cuts: Sequence[CutLike]) -> Plan:
    try:
        return plan(snapshot, cuts)
    except CutInsideLeaf as err:
        better = untraced.blame(snapshot, err)
        if better is err:
            raise
        raise better from err


def _choose_cuts(
    ns: argparse.Namespace,
    loaded: snapshot_source.Loaded,
    cost: str,
    max_memory: float | None = None,
    train: Training | None = None,
    measured: dict[str, float] | None = None,
) -> tuple[Sequence[CutLike], str, balancing.Balanced | None]:
    """The cuts, why these, and the balance that chose them (for --stages)."""
    if ns.stages is not None:
        balanced = balancing.balance(loaded.snapshot, ns.stages, cost, measured, max_memory=max_memory, training=train)
        under = "" if max_memory is None else f", each under {human(max_memory, 'B')}"
        return balanced.cuts, f"balanced by {cost} into {ns.stages} stages{under}", balanced
    if ns.cut:
        return ns.cut, "given with --cut", None
    default = equal_blocks(loaded.snapshot)
    return default.cuts, f"default: {default.why}; choose with --cut or --stages", None


def _measure(loaded: snapshot_source.Loaded) -> dict[str, float] | None:
    if loaded.model is None:
        return None
    from adapters.fx.measure import module_seconds

    source = loaded.model
    return module_seconds(source.model, source.args, source.kwargs)
