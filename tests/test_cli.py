"""The `stagecut` command line, run as a user runs it: a subprocess per command.

Each subprocess that traces a model imports torch (seconds), so the checks are grouped
per invocation; the snapshot-file commands run with torch blocked, which also proves that
path never imports it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adapters.cli.errors import UsageError
from core import Param, Plan, Snapshot, ValueInfo, plan
from core.builder import GraphBuilder, module
from core.table import compress_paths, human

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "adapters.cli"]
SCRIPT = Path(sys.executable).with_name("stagecut")
ERROR = re.compile(r"^stagecut: error: .+\n$")


def stagecut(
    *args: str, cwd: Path | None = None, block_torch: Path | None = None, command: Sequence[str] = CLI
) -> subprocess.CompletedProcess[str]:
    path = [str(block_torch)] if block_torch else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    return subprocess.run(
        [*command, *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` fail."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked by this test')\n")
    return folder


# -- a hand-built snapshot: embedding and head tied, four numbered blocks, a residual bypass


ACT = ValueInfo("tensor", (4, 16), "float32", 4 * 16 * 4)


def toy_snapshot() -> Snapshot:
    g = GraphBuilder()
    x = g.placeholder("x", info=ACT)
    h = g.call_module("embed", x, info=ACT)
    for i in range(4):
        h = g.call_module(f"blocks.{i}", h, info=ACT)
    out = g.call_module("head", g.call_function("operator.add", h, x, info=ACT), info=ACT)
    tied = {"weight": Param("tied", 256, 1024)}
    blocks = {
        str(i): module(f"blocks.{i}", params={"weight": Param(f"w{i}", 256, 1024)}, type_name="Block", leaf_reason="listed")
        for i in range(4)
    }
    children = {
        "embed": module("embed", params=tied, type_name="Embedding", leaf_reason="a torch.nn built-in module"),
        "blocks": module("blocks", children=blocks, type_name="ModuleList"),
        "head": module("head", params=tied, type_name="Linear", leaf_reason="a torch.nn built-in module"),
    }
    return Snapshot(module("", g.output(out), children, type_name="Toy"))


# -- reading the table


def table_rows(stdout: str, numbers: int = 4) -> dict[int, tuple[str, list[str]]]:
    """stage -> (modules on its first line, the number cells) from a printed plan table."""
    rows = {}
    for line in stdout.splitlines():
        if re.match(r"^ {0,4}\d+  \S", line):
            cells = line.split()
            rows[int(cells[0])] = (" ".join(cells[1:-numbers]), cells[-numbers:])
    return rows


def assert_table_matches(stdout: str, expected: Plan, costs: int = 0) -> None:
    rows = table_rows(stdout, 4 + costs)
    assert sorted(rows) == [s.index for s in expected.stages]
    for stage in expected.stages:
        modules, cells = rows[stage.index]
        fig = stage.figures
        assert ", ".join(compress_paths(stage.modules)).startswith(modules)
        assert cells[:4] == [human(fig.params), human(fig.param_bytes, "B"), human(fig.bytes_in, "B"), human(fig.bytes_out, "B")]
        if stage.bypass:
            assert f"bypass: {stage.bypass[0]} (" in stdout
    for group in expected.ties:
        assert ", ".join(f"{name} @{s}" for name, s in group) in stdout


def assert_dot(text: str, expected: Plan) -> None:
    """Structure always; and Graphviz's own parser where `dot` is installed."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # braces inside labels do not count
    assert bare.count("{") == bare.count("}") and bare.lstrip().startswith("digraph")
    for stage in expected.stages:
        assert f"subgraph cluster_stage{stage.index} {{" in text
        assert re.search(rf"^\s*stage{stage.index} \[label=", text, re.M)
    for sender, receiver in zip(expected.stages, expected.stages[1:]):
        edge = re.search(rf'^\s*stage{sender.index} -> stage{receiver.index} \[label="([^"]*)"\]', text, re.M)
        assert edge, f"no edge {sender.index} -> {receiver.index}"
        for name in receiver.inputs:
            assert name in edge.group(1)
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, check=True).stdout
        assert ET.fromstring(svg).tag.endswith("svg")


def assert_svg(path: Path) -> None:
    assert ET.parse(path).getroot().tag.endswith("svg")


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert ERROR.match(result.stderr), result.stderr  # one line, no traceback
    for word in words:
        assert word in result.stderr


# -- commands that trace a model: they import torch, so all three run at once


FACTORY_FILE = '''
\"\"\"A user's model outside the package.\"\"\"
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.linear(x))


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.layers = nn.ModuleList(Block(width) for _ in range(3))

    def forward(self, x, scale=1.0):
        for layer in self.layers:
            x = layer(x)
        return x * scale


def make(width=8):
    \"\"\"A three-block net.\"\"\"
    return Net(width), (torch.randn(2, width),), {"scale": 2.0}
'''


def on_terminal(command: Sequence[str], cwd: Path) -> tuple[int, str, bytes]:
    """Run with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    terminal = b""
    while True:  # drain the terminal while the command runs, so it never blocks on it
        ready, _, _ = select.select([master], [], [], 0.1)
        chunk = b""
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                pass
        terminal += chunk
        if not chunk and process.poll() is not None:
            break
    os.close(master)
    assert process.stdout is not None
    return process.wait(), process.stdout.read().decode(), terminal


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Future[Any]]]]:
    """Start the two commands that trace a model together; each test waits for its own."""
    folder = tmp_path_factory.mktemp("traced")
    (folder / "elsewhere").mkdir()
    (folder / "elsewhere" / "models.py").write_text(FACTORY_FILE)
    script = [str(SCRIPT)] if SCRIPT.exists() else CLI  # the console script, as `make demo` runs it
    with ThreadPoolExecutor(2) as pool:
        yield folder, {
            "default": pool.submit(
                stagecut, "plan", "--json", "plan.json", "--dot", "plan.dot", "--svg", "out/plan.svg",
                "--png", "plan.png", "--save-snapshot", "snap.json", cwd=folder, command=script,
            ),
            "file": pool.submit(
                on_terminal,
                [*CLI, "snapshot", "--model", "elsewhere/models.py:make", "-o", "width=4", "--leaf", "layers.2",
                 "--out", "s.json"],
                folder,
            ),
        }


def test_plan_with_no_arguments_plans_gpt_in_4_stages_and_writes_every_output(
    traced: tuple[Path, dict[str, Future[Any]]],
) -> None:
    folder, runs = traced
    result = runs["default"].result()
    assert result.returncode == 0, result.stderr
    # Piped stderr: no progress bar, only what was written.
    assert [line.split()[-1] for line in result.stderr.splitlines()] == [
        "snap.json", "plan.json", "plan.dot", "out/plan.svg", "plan.png"
    ]
    assert "\r" not in result.stderr

    # The plan computed here, from the snapshot the command saved, is the one it printed and wrote.
    saved = Snapshot.from_json((folder / "snap.json").read_text())
    expected = plan(saved, ["blocks.1", "blocks.3", "blocks.5"])
    assert saved.root.type_name == "GPT" and len(saved.modules["blocks"].children) == 8
    assert "cuts: after:blocks.1, after:blocks.3, after:blocks.5 (default:" in result.stdout
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    assert f"$ stagecut plan\n{result.stdout}```" in cli_doc  # the docs show the real output
    assert_table_matches(result.stdout, expected)
    assert table_rows(result.stdout)[0][0] == "tok_emb, pos_emb, blocks.0-1"
    assert Plan.from_json((folder / "plan.json").read_text()) == expected
    assert_dot((folder / "plan.dot").read_text(), expected)
    assert_svg(folder / "out" / "plan.svg")
    assert_png(folder / "plan.png")


def test_a_factory_in_a_file_shows_progress_on_a_terminal_and_its_snapshot_plans(
    traced: tuple[Path, dict[str, Future[Any]]], no_torch: Path
) -> None:
    from adapters.cli.cut_points import cut_points

    folder, runs = traced
    code, stdout, terminal = runs["file"].result()
    assert code == 0, terminal
    assert b"\rstagecut: tracing [" in terminal
    assert re.search(rb"\r +\rstagecut: wrote snapshot s.json\r\n$", terminal)  # the bar erased, then the news
    assert stdout == ""
    saved = Snapshot.from_json((folder / "s.json").read_text())
    assert saved.root.type_name == "Net" and saved.modules["layers.2"].leaf_reason == "listed in leaf_modules"

    planned = stagecut("plan", "--snapshot", "s.json", "--cut", "before:layers.1", "--format", "json",
                       cwd=folder, block_torch=no_torch)
    assert planned.returncode == 0, planned.stderr
    result = Plan.from_json(planned.stdout)  # stdout is pure JSON
    assert result == plan(saved, ["before:layers.1"])
    assert [s.modules for s in result.stages] == [("layers.0",), ("layers.1", "layers.2")]
    assert result.stages[0].figures.params == 4 * 4 + 4
    assert "scale" in result.stages[1].inputs  # the float input, read only at the end
    assert result.stages[0].figures.bytes_out == 2 * 4 * 4 + 8  # the hidden state and the float

    inspected = stagecut("inspect", "--snapshot", "s.json", cwd=folder, block_torch=no_torch)
    assert inspected.returncode == 0, inspected.stderr
    lines = inspected.stdout.splitlines()
    assert lines[1] == f"traced with fx: 3 modules, 4 leaves, 1 container (not called); {len(cut_points(saved))} cut points"
    rows = [line.split() for line in lines[4:10]]
    assert rows == [
        ["<root>", "Net", "-", "traced"],
        ["layers", "ModuleList", "-", "container"],
        ["0-1", "Block", "yes", "traced"],  # two identical blocks, shown once
        ["linear", "Linear", "yes", "leaf", "(1)"],
        ["2", "Block", "yes", "leaf", "(2)"],  # the third differs: kept a leaf by --leaf
        ["linear", "Linear", "-", "leaf", "(3)"],
    ]
    assert "  (2) listed in leaf_modules: 1" in inspected.stdout


def test_a_factory_in_a_module_on_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In process (the subprocess path is the file form's, above): `package.module:factory`.
    from adapters.cli import model_source

    (tmp_path / "mymodels.py").write_text(FACTORY_FILE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    source = model_source.load("mymodels:make", {"width": 4})
    assert (source.name, source.description) == ("mymodels:make", "A three-block net.")
    assert type(source.model).__name__ == "Net" and source.kwargs == {"scale": 2.0}
    assert [tuple(a.shape) for a in source.args] == [(2, 4)]
    with pytest.raises(UsageError, match="no module named 'nothere'"):
        model_source.load("nothere.models:make", {})
    with pytest.raises(UsageError, match="bad options"):
        model_source.load("mymodels:make", {"depth": 3})


# -- commands on a snapshot file (torch blocked) and errors


def test_plan_and_inspect_of_a_snapshot_file_never_import_torch(tmp_path: Path, no_torch: Path) -> None:
    snap = toy_snapshot()
    (tmp_path / "toy.json").write_text(snap.to_json())

    default = stagecut("plan", "--snapshot", "toy.json", "--dot", "toy.dot", cwd=tmp_path, block_torch=no_torch)
    assert default.returncode == 0, default.stderr
    expected = plan(snap, ["blocks.0", "blocks.1", "blocks.2"])  # 4 blocks, 4 stages
    assert_table_matches(default.stdout, expected)
    assert "bypass: x (256B)" in default.stdout and "embed.weight @0, head.weight @3" in default.stdout
    assert_dot((tmp_path / "toy.dot").read_text(), expected)

    as_json = stagecut("plan", "--snapshot", "toy.json", "--cut", "before:blocks.2", "--format", "json",
                       cwd=tmp_path, block_torch=no_torch)
    assert as_json.returncode == 0, as_json.stderr
    assert Plan.from_json(as_json.stdout) == plan(snap, ["before:blocks.2"])

    inspected = stagecut("inspect", "--snapshot", "toy.json", cwd=tmp_path, block_torch=no_torch)
    assert inspected.returncode == 0, inspected.stderr
    assert "traced 1 module, 6 leaves, 1 container (not called); 6 cut points" in inspected.stdout
    assert re.search(r"^    0-3 +Block +yes +leaf \(2\)$", inspected.stdout, re.M)
    assert "  (2) listed: 4" in inspected.stdout


def test_stages_balances_with_core_balance(tmp_path: Path, no_torch: Path) -> None:
    (tmp_path / "toy.json").write_text(toy_snapshot().to_json())
    result = stagecut("plan", "--snapshot", "toy.json", "--stages", "2", cwd=tmp_path, block_torch=no_torch)
    try:
        from core.balance import balance_report
    except ModuleNotFoundError:
        assert_usage_error(result, "--stages needs automatic balancing")
        return
    assert result.returncode == 0, result.stderr
    from core import costs

    report = balance_report(toy_snapshot(), 2, cost=costs.params)
    expected = plan(toy_snapshot(), report.cuts)
    assert_table_matches(result.stdout, expected, costs=1)
    assert [row[1][-1] for row in table_rows(result.stdout, 5).values()] == [human(c) for c in report.stage_costs]
    assert f"imbalance (max/mean): {report.imbalance:.3f}" in result.stdout


BAD = {
    "unknown cut": (["plan", "--snapshot", "toy.json", "--cut", "blocks.9"], ["'blocks.9'", "Did you mean"]),
    "cut at the root": (["plan", "--snapshot", "toy.json", "--cut", ""], ["root module cannot be cut"]),
    "duplicate cut": (["plan", "--snapshot", "toy.json", "--cut", "head", "--cut", "after:head"], ["more than once"]),
    "missing snapshot": (["inspect", "--snapshot", "nope.json"], ["cannot read snapshot 'nope.json'"]),
    "not a snapshot": (["plan", "--snapshot", "bad.json"], ["expected schema"]),
    "snapshot and model": (["plan", "--snapshot", "toy.json", "--model", "gpt"], ["--snapshot replaces --model"]),
    "stages and cuts": (["plan", "--snapshot", "toy.json", "--stages", "2", "--cut", "head"], ["give one or the other"]),
    "cost without stages": (["plan", "--snapshot", "toy.json", "--cost", "flops"], ["--stages N"]),
    "measured, no model": (["plan", "--snapshot", "toy.json", "--stages", "2", "--cost", "measured"], ["needs --model"]),
    "unknown option": (["plan", "--bogus"], ["unrecognized arguments: --bogus"]),
    "missing module": (["plan", "--model", "no_such_package.models:make"], ["no module named 'no_such_package'"]),
    "missing file": (["plan", "--model", "missing/models.py:make"], ["no file 'missing/models.py'"]),
    "missing factory": (["plan", "--model", "models.py:nothing"], ["has no attribute 'nothing'"]),
    "bad factory options": (["plan", "--model", "models.py:make", "-o", "depth=2"], ["bad options", "it takes width"]),
    "bad option syntax": (["plan", "--model", "models.py:make", "-o", "width"], ["expected KEY=VALUE"]),
    "not a model": (["plan", "--model", "models.py:three"], ["returned a value of type 'int'; expected (model, args)"]),
}


def test_bad_usage_gives_one_line_and_exit_2(tmp_path: Path, no_torch: Path) -> None:
    (tmp_path / "toy.json").write_text(toy_snapshot().to_json())
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    (tmp_path / "models.py").write_text("def make(width=8):\n    raise AssertionError('never called')\n\n\ndef three():\n    return 3\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(no_torch), str(ROOT)])}
    running = {  # all at once: each is a short-lived process
        name: subprocess.Popen([*CLI, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (args, _) in BAD.items()
    }
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (name, stderr)
        assert ERROR.match(stderr) and not stdout, (name, stderr)
        for word in BAD[name][1]:
            assert word in stderr, (name, stderr)


def test_an_internal_error_exits_1_with_its_traceback(tmp_path: Path, no_torch: Path) -> None:
    (tmp_path / "models.py").write_text("def broken():\n    raise RuntimeError('the factory itself is broken')\n")
    result = stagecut("plan", "--model", "models.py:broken", cwd=tmp_path, block_torch=no_torch)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: the factory itself is broken" in result.stderr
