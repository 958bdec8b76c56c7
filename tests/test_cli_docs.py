"""The docs tell the truth: their examples run and print what they show, their names exist."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import core.errors
from adapters.cli import parser
from adapters.cli.errors import UsageError
from core import Graph, Node, PlanError, Ref, Snapshot, plan
from core.builder import GraphBuilder, module
from tests.test_cli import toy_snapshot
from tests.test_cli_parts import numbered

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def blocks(path: Path, language: str = "") -> list[str]:
    """The fenced blocks of a markdown file with this language tag ("" = untagged)."""
    found: list[str] = []
    current: list[str] | None = None
    tag = ""
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                tag, current = line[3:].strip(), []
            else:
                if tag == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def printed(code: str, cwd: Path | None = None) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.chdir(cwd or ROOT):
        exec(compile(code, "<doc>", "exec"), {})
    return out.getvalue()


def test_readme_example_prints_the_table_it_shows() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert text.startswith("# stagecut\n\nCut a PyTorch model into pipeline-parallel stages")
    assert "make demo" in text and "make test" in text
    example = next(b for b in blocks(readme, "python") if "GraphBuilder" in b)  # the core's example
    assert len(example.strip().splitlines()) <= 14
    table = next(b for b in blocks(readme) if b.startswith("stage  modules"))
    assert printed(example) == table


def test_snapshot_schema_example_loads_and_plans_as_shown(tmp_path: Path) -> None:
    schema = DOCS / "snapshot-schema.md"
    (document,) = blocks(schema, "json")
    (tmp_path / "residual.json").write_text(document)
    snapshot = Snapshot.from_json(document)
    assert snapshot.to_json() == Snapshot.from_json(snapshot.to_json()).to_json()
    (code,) = blocks(schema, "python")
    assert printed(code, tmp_path) == blocks(schema)[0]
    assert plan(snapshot, ["layers.0"]).stages[0].outputs == ("x", "layers_0")


def _dangling() -> Snapshot:
    """'enc' adds a value 'y' that nothing defines."""
    x = Node("x", "placeholder", "x")
    add = Node("add", "call_function", "_operator.add", (Ref("x"), Ref("y")))
    enc = module("enc", Graph((x, add, Node("output", "output", "output", (Ref("add"),)))))
    g = GraphBuilder()
    return Snapshot(module("", g.output(g.call_module("enc", g.placeholder("x"))), {"enc": enc}))


def _wrapped(leaf_reason: str | None, variadic: bool) -> Snapshot:
    inner = GraphBuilder()
    h = inner.call_module("inner", inner.placeholder("*args" if variadic else "x"))
    enc = module("enc", None if leaf_reason else inner.output(h), {"inner": module("enc.inner", leaf_reason="x")},
                 leaf_reason=leaf_reason)
    g = GraphBuilder()
    return Snapshot(module("", g.output(g.call_module("enc", g.placeholder("x"))), {"enc": enc}))


def _balance(cost: object, stages: int) -> None:
    from core import costs
    from core.balance import balance

    balance(toy_snapshot(), stages, cost=costs.params if cost is None else cost)  # type: ignore[arg-type]


SCENARIOS: dict[str, Callable[[], object]] = {
    "MalformedSnapshot": lambda: Snapshot.from_json('{"schema": "x"}'),
    "MalformedSnapshot ": lambda: plan(_dangling()),
    "UnknownPath": lambda: plan(toy_snapshot(), ["blocks.9"]),
    "CutAtRoot": lambda: plan(toy_snapshot(), [""]),
    "CutInsideLeaf": lambda: plan(_wrapped("fx could not trace it: TraceError: ...", False), ["enc.inner"]),
    "NotCalled": lambda: plan(toy_snapshot(), ["blocks"]),
    "CalledMoreThanOnce": lambda: plan(numbered(4, twice=1), ["blocks.1"]),
    "DuplicateCut": lambda: plan(toy_snapshot(), ["blocks.1", "after:blocks.1"]),
    "EmptyStage": lambda: plan(toy_snapshot(), ["blocks.1", "before:blocks.2"]),
    "UnsupportedGraph": lambda: plan(_wrapped(None, True), ["enc.inner"]),
    "BalanceError": lambda: _balance(None, 9),
    "BalanceError ": lambda: _balance({"nothing": 1.0}, 2),
}


def test_errors_doc_covers_every_plan_error_with_real_messages() -> None:
    doc = (DOCS / "errors.md").read_text()
    kinds = {c.__name__ for c in vars(core.errors).values() if isinstance(c, type) and issubclass(c, PlanError) and c is not PlanError}
    kinds.add("UnresolvedHandle")  # the fx adapter's
    for kind in kinds:
        assert re.search(rf"^#+ {kind}$", doc, re.M), f"errors.md has no section for {kind}"
    messages = set()
    for name, scenario in SCENARIOS.items():
        with pytest.raises(getattr(core.errors, name.strip())) as raised:
            scenario()
        messages.add(str(raised.value))
    shown = {line for block in blocks(DOCS / "errors.md")[1:] for line in block.splitlines()}
    assert shown == messages  # every message shown is real, and every scenario is shown


def test_cli_doc_names_only_real_options() -> None:
    top = parser()
    known = set()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                known.update(o for a in command._actions for o in a.option_strings)
    for doc in (DOCS / "cli.md", ROOT / "README.md", DOCS / "errors.md"):
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", doc.read_text()):
            assert option in known | {"--bogus", "--strict"}, f"{doc.name} names {option}"  # mypy --strict
    with pytest.raises(SystemExit):
        top.parse_args(["plan", "--bogus"])


def test_architecture_doc_names_only_files_that_exist() -> None:
    text = (DOCS / "architecture.md").read_text()
    named = re.findall(r"`((?:core|adapters)/[\w/]+\.py)`", text)
    assert len(named) > 15
    for path in named:
        assert (ROOT / path).exists(), path
    for name in re.findall(r"\| `(\w+\.py)`", text):  # the CLI's files, named without their folder
        assert (ROOT / "adapters" / "cli" / name).exists(), name


def test_usage_errors_are_not_plan_errors() -> None:
    # main() reports both the same way, but embedders catching PlanError must not see CLI errors.
    assert not issubclass(UsageError, PlanError)
