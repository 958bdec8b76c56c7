"""The command line's torch-free parts, in process: cut points, default cuts, DOT, table, tree, progress."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.cli.cut_points import cut_points
from adapters.cli.default_cuts import equal_blocks
from adapters.cli.errors import UsageError
from adapters.cli.inspect_command import render_tree
from adapters.cli.model_source import parse_options
from adapters.cli.progress import Progress
from adapters.cli.table import render_table as cli_table
from core import Param, PlanError, Snapshot, plan
from core.builder import GraphBuilder, module
from core.dot import render_dot
from core.table import human, render_table
from core.validate import check_cuts
from tests.reference import cases, cut_sets
from tests.test_cli import assert_dot, toy_snapshot

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cases())
def test_cut_points_are_the_paths_check_cuts_accepts(case: object) -> None:
    snapshot: Snapshot = case.snapshot  # type: ignore[attr-defined]
    points = cut_points(snapshot)
    for path in snapshot.modules:
        if not path:
            continue
        try:
            check_cuts(snapshot, [path])
            accepted = True
        except PlanError:
            accepted = False
        assert (path in points) == accepted, path


@SETTINGS
@given(st.data())
def test_dot_table_and_tree_render_any_plan(data: st.DataObject) -> None:
    snapshot = data.draw(cases()).snapshot
    result = plan(snapshot, data.draw(cut_sets(snapshot, invalid=False, plannable=True)))
    assert_dot(render_dot(result, 'a "quoted" title'), result)
    table = render_table(result, [1.5] * len(result.stages))
    assert all(len(line) <= 80 for line in table.splitlines()), table
    for costs in (None, [1.5e12] * len(result.stages)):  # the command line's table, with param bytes
        table = cli_table(result, costs)
        assert all(len(line) <= 80 for line in table.splitlines()), table
    assert render_tree(snapshot).count("\n") >= 4


def numbered(n: int, twice: int | None = None) -> Snapshot:
    """x -> pre -> blocks.0 .. blocks.n-1 -> output; block `twice` is called a second time."""
    g = GraphBuilder()
    h = g.call_module("pre", g.placeholder("x"))
    for i in range(n):
        h = g.call_module(f"blocks.{i}", h)
        if i == twice:
            h = g.call_module(f"blocks.{i}", h)
    blocks = {str(i): module(f"blocks.{i}", leaf_reason="leaf") for i in range(n)}
    children = {"pre": module("pre", leaf_reason="leaf"), "blocks": module("blocks", children=blocks)}
    return Snapshot(module("", g.output(h), children))


@pytest.mark.parametrize(
    ("n", "stages", "cuts"),
    [
        (8, 4, ("blocks.1", "blocks.3", "blocks.5")),
        (4, 4, ("blocks.0", "blocks.1", "blocks.2")),
        (12, 4, ("blocks.2", "blocks.5", "blocks.8")),
        (3, 4, ("blocks.0", "blocks.1")),  # fewer blocks than stages: one block a stage
        (1, 4, ("pre",)),  # no run of blocks: the calls of the root graph are the candidates
        (8, 1, ()),
    ],
)
def test_default_cuts_split_the_blocks_evenly(n: int, stages: int, cuts: tuple[str, ...]) -> None:
    snapshot = numbered(n)
    default = equal_blocks(snapshot, stages)
    assert tuple(c.path for c in default.cuts) == cuts
    plan(snapshot, default.cuts)  # and they plan


def test_default_cuts_skip_blocks_called_twice() -> None:
    snapshot = numbered(4, twice=1)
    assert [c.path for c in equal_blocks(snapshot, 4).cuts] == ["blocks.0", "blocks.2"]


def test_dot_marks_bypass_values_and_ties() -> None:
    result = plan(toy_snapshot(), ["blocks.0", "blocks.2"])
    dot = render_dot(result)
    assert result.stages[1].bypass == ("x",)
    assert re.search(r'stage0 -> stage1 \[label="[^"]*x 256B \(bypass\)', dot)
    assert not re.search(r'stage1 -> stage2 \[label="[^"]*\(bypass\)', dot)
    assert 'stage0 -> stage2 [style=dashed, dir=none, constraint=false, color=gray40, fontcolor=gray40, label="tied: embed.weight = head.weight"]' in dot


def test_table_lists_bypass_values_with_their_bytes() -> None:
    table = str(plan(toy_snapshot(), ["blocks.0", "blocks.2"]))
    assert "       bypass: x (256B)" in table.splitlines()
    assert "  embed.weight @0, head.weight @2" in table.splitlines()


def test_human_numbers() -> None:
    assert [human(n) for n in (0, 999, 1500, 2_500_000, 3 * 10**9, 4 * 10**12)] == [
        "0", "999", "1.5k", "2.5M", "3.0G", "4.0T"
    ]
    assert (human(0.25, "s"), human(None), human(2.0)) == ("0.25s", "?", "2")


def test_progress_draws_on_a_terminal_and_erases_itself() -> None:
    shown = io.StringIO()
    progress = Progress(shown, enabled=True)
    progress.start("tracing", total=4)
    for path in ("a", "b", "c", "d"):
        progress(path)
    progress.close()
    text = shown.getvalue()
    assert text.startswith("\rstagecut: tracing [....................] 0/4")
    assert text.endswith("\r") and text.rstrip("\r").endswith(" ")  # blanked out
    quiet = io.StringIO()
    silent = Progress(quiet)  # a StringIO is not a terminal
    silent.start("tracing", 2)
    silent("a")
    silent.close()
    assert quiet.getvalue() == ""


def test_options_parse_as_python_literals() -> None:
    assert parse_options(["n=3", "rate=0.5", "name=tiny", "flag=True", "shape=(2, 3)"]) == {
        "n": 3, "rate": 0.5, "name": "tiny", "flag": True, "shape": (2, 3)
    }
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_options(["3=n"])


def test_params_in_the_toy_are_tied() -> None:
    # A guard on the fixture the CLI tests share: embed and head hold one storage.
    snap = toy_snapshot()
    assert snap.param("embed.weight") == snap.param("head.weight") == Param("tied", 256, 1024)
