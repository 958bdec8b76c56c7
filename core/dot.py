"""The plan as a Graphviz DOT graph: one box per stage, the values crossing on the edges.

    from core.dot import render_dot
    Path("plan.dot").write_text(render_dot(plan))   # then: dot -Tsvg plan.dot > plan.svg

Each stage is a cluster holding one box with its modules (numbered runs compressed) and
its figures. The edge from stage s to s+1 lists the values sent, with their bytes per
microbatch; a value that stage s+1 only passes on is marked "(bypass)". Tied parameters
are dashed lines between the stages that hold them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING

from core.table import compress_paths, human, value_bytes

if TYPE_CHECKING:
    from core.plan import Plan, Stage

_WRAP = 40  # characters per label line


def render_dot(plan: Plan, title: str = "plan") -> str:
    """The DOT source of `plan`; stage s is the node `stage{s}` inside `cluster_stage{s}`."""
    last = len(plan.stages) - 1
    lines = [
        f"digraph {_quote(title)} {{",
        "  rankdir=LR;",
        f"  label={_quote(title)}; labelloc=t;",
        '  node [shape=box, fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
        "  inputs [shape=plaintext];",
        "  outputs [shape=plaintext];",
    ]
    for stage in plan.stages:
        lines += [
            f"  subgraph cluster_stage{stage.index} {{",
            f"    label={_quote(f'stage {stage.index}')};",
            f"    stage{stage.index} [label={_quote(_stage_label(stage))}];",
            "  }",
        ]
    lines.append(f"  inputs -> stage0 [label={_quote(_values(plan.stages[0], plan.stages[0].inputs, ()))}];")
    for sender, receiver in zip(plan.stages, plan.stages[1:]):
        label = _values(sender, sender.outputs, receiver.bypass)
        lines.append(f"  stage{sender.index} -> stage{receiver.index} [label={_quote(label)}];")
    lines.append(f"  stage{last} -> outputs [label={_quote(_values(plan.stages[last], plan.stages[last].outputs, ()))}];")
    for group in plan.ties:
        stages = sorted({s for _, s in group})
        names = " = ".join(dict.fromkeys(name for name, _ in group))
        for a, b in zip(stages, stages[1:]):
            lines.append(
                f"  stage{a} -> stage{b} [style=dashed, dir=none, constraint=false, "
                f"color=gray40, fontcolor=gray40, label={_quote('tied: ' + names)}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _stage_label(stage: Stage) -> str:
    fig = stage.figures
    text = [
        *textwrap.wrap(", ".join(compress_paths(stage.modules)) or "(no modules)", _WRAP),
        f"{human(fig.params)} params ({human(fig.param_bytes, 'B')})",
        f"in {human(fig.bytes_in, 'B')}, out {human(fig.bytes_out, 'B')}",
    ]
    if stage.bypass:
        text += textwrap.wrap("bypass: " + ", ".join(stage.bypass), _WRAP)
    return _lines(text)


def _values(stage: Stage, names: tuple[str, ...], bypass: tuple[str, ...]) -> str:
    """One line per value: its name, bytes, and whether the receiver only passes it on."""
    passed = set(bypass)
    return _lines(
        f"{name} {human(value_bytes(stage, name), 'B')}" + (" (bypass)" if name in passed else "")
        for name in names
    )


def _lines(lines: Iterable[str]) -> str:
    return "\n".join(lines)


def _quote(text: str) -> str:
    """A DOT double-quoted string; newlines become centred line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
