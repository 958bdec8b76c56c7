"""`stagecut inspect`: the module tree, what was traced, what stayed a leaf and why, where cuts can go.

Runs of numbered siblings that look the same (type, status, cut point, and the same below)
print as one row, `0-11`, with their subtree shown once.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.snapshot import Module, Snapshot, join

from adapters.cli import snapshot_source, untraced
from adapters.cli.cut_points import cut_points, per_call_points
from adapters.cli.progress import Progress

DESCRIPTION = """\
Show the model's module tree and the tracer that made it (fx or export): which
modules were traced (their graphs are known), which stayed leaves and why, and
where a cut is possible (a module called exactly
once, on a chain of such calls up to the root). Numbered siblings that look the
same are shown once, as a range such as 0-11.
"""


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("inspect", help="show the module tree and where cuts can go", description=DESCRIPTION)
    snapshot_source.add_arguments(parser)
    parser.add_argument("--depth", type=int, metavar="N", help="show modules at most N levels below the root")
    parser.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    loaded = snapshot_source.load(ns, Progress())
    print(f"{loaded.name}: {loaded.description}")
    print(render_tree(loaded.snapshot, ns.depth))
    return 0


@dataclass(frozen=True, slots=True)
class _Row:
    depth: int
    name: str
    type_name: str
    cut: str  # "yes", "-", or the calls a cut can name ("#0-3")
    status: str  # "traced", "container" or the leaf reason


def render_tree(snapshot: Snapshot, max_depth: int | None = None) -> str:
    cuttable = cut_points(snapshot)
    per_call = per_call_points(snapshot)
    order = _call_order(snapshot)

    def cut_mark(path: str) -> str:
        if path in cuttable:
            return "yes"
        return f"#0-{per_call[path] - 1}" if path in per_call else "-"

    rows: list[_Row] = []
    signatures: dict[str, object] = {}

    def signature(module: Module) -> object:
        if module.path not in signatures:
            kids = tuple((name, signature(child)) for name, child in _children(module, order))
            signatures[module.path] = (module.type_name, _status(snapshot, module), cut_mark(module.path), kids)
        return signatures[module.path]

    def visit(module: Module, name: str, depth: int) -> None:
        rows.append(_Row(depth, name, module.type_name, cut_mark(module.path), _status(snapshot, module)))
        if max_depth is not None and depth >= max_depth:
            return
        kids = _children(module, order)
        i = 0
        while i < len(kids):
            first_name, first = kids[i]
            j = i + 1
            if first_name.isdigit():
                while (
                    j < len(kids)
                    and kids[j][0].isdigit()
                    and int(kids[j][0]) == int(first_name) + (j - i)
                    and signature(kids[j][1]) == signature(first)
                ):
                    j += 1
            shown = first_name if j == i + 1 else f"{first_name}-{kids[j - 1][0]}"
            visit(first, shown, depth + 1)
            i = j

    visit(snapshot.root, "<root>", 0)
    return _format(snapshot, rows, cuttable, per_call)


def _format(snapshot: Snapshot, rows: list[_Row], cuttable: frozenset[str], per_call: dict[str, int]) -> str:
    reasons: dict[str, int] = {}
    modules = list(snapshot.root.walk())
    leaves = Counter(_status(snapshot, m) for m in modules if m.graph is None and m.leaf_reason is not None)
    traced = sum(1 for m in modules if m.graph is not None)
    containers = sum(1 for m in modules if m.graph is None and m.leaf_reason is None)
    name_width = min(max(2 * r.depth + len(r.name) for r in rows), 40)
    type_width = min(max(len("type"), *(len(r.type_name) for r in rows)), 24)
    cut_width = max(3, *(len(r.cut) for r in rows))
    tracer = f" with {snapshot.tracer}:" if snapshot.tracer else ""
    lines = [
        f"traced{tracer} {_count(traced, 'module')}, {_count(sum(leaves.values()), 'leaf', 'leaves')}, "
        f"{_count(containers, 'container')} (not called); {_count(len(cuttable), 'cut point')}",
        "",
        f"{'module':<{name_width}}  {'type':<{type_width}}  {'cut':<{cut_width}}  status",
    ]
    for row in rows:
        status = row.status
        if status not in ("traced", "container"):
            status = f"leaf ({reasons.setdefault(status, len(reasons) + 1)})"
        name = "  " * row.depth + row.name
        mark = " - " if row.cut == "-" else row.cut
        lines.append(f"{name:<{name_width}}  {row.type_name:<{type_width}}  {mark:<{cut_width}}  {status}")
    if reasons:
        lines += ["", "why leaves were not traced (modules in the whole tree):"]
        for reason, number in reasons.items():
            text = f"({number}) {reason}: {leaves[reason]}"
            lines += textwrap.wrap(text, 78, initial_indent="  ", subsequent_indent="      ")
    lines += ["", "cut after (or before) a module marked yes:  stagecut plan --cut PATH  (or before:PATH)"]
    if per_call:
        lines.append("a module called several times (#0-N): name one call, --cut PATH#K (call K, from 0)")
    return "\n".join(lines)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _status(snapshot: Snapshot, module: Module) -> str:
    if module.graph is not None:
        return "traced"
    reason = untraced.shown_reason(snapshot, module)
    return reason if reason is not None else "container"


_DIGITS = re.compile(r"(\d+)")


def _children(module: Module, order: dict[str, int]) -> list[tuple[str, Module]]:
    """Children in the order they are first called, then the rest by name (numbers numerically)."""
    def key(item: tuple[str, Module]) -> tuple[int, list[tuple[int, str]]]:
        name, child = item
        natural = [(int(p), "") if p.isdigit() else (-1, p) for p in _DIGITS.split(name)]
        return order.get(child.path, len(order)), natural

    return sorted(module.children.items(), key=key)


def _call_order(snapshot: Snapshot) -> dict[str, int]:
    """Module path -> when the model first calls it or anything below it (in execution order)."""
    order: dict[str, int] = {}

    def run(module: Module) -> None:
        assert module.graph is not None
        for node in module.graph.nodes:
            if node.op != "call_module":
                continue
            callee = join(module.path, node.target)
            parts = callee.split(".")
            for n in range(1, len(parts) + 1):
                order.setdefault(".".join(parts[:n]), len(order))
            target = snapshot.modules.get(callee)
            if target is not None and target.graph is not None and callee not in seen:
                seen.add(callee)
                run(target)

    seen: set[str] = set()
    if snapshot.root.graph is not None:
        run(snapshot.root)
    return order
