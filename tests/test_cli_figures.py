"""`stagecut plan --schedule --microbatches --optimizer --dtype --bandwidth --max-memory`: the
figures table, the JSON that carries them, the chart's memory panel, `--stages N
--max-memory` balancing under the cap, and the errors; one subprocess per command, as a user
runs it (the `--snapshot` one with torch blocked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.cli.errors import UsageError
from adapters.cli.figures import size
from core import Plan, Snapshot
from core.figures import figures

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "adapters.cli"]
ERROR = re.compile(r"^stagecut: error: .+\n$")


def stagecut(*args: str, block_torch: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = [str(block_torch)] if block_torch else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_sizes() -> None:
    assert size("80GB") == 80e9
    assert size("80 GiB") == 80 * 2**30
    assert size("25GB/s", "--bandwidth") == 25e9
    assert size("1e9") == 1e9
    assert size("512kB") == 512e3
    for bad in ("80XB", "", "-3GB", "0GB", "GB"):
        with pytest.raises(UsageError):
            size(bad)


def test_figures_table_json_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    svg = tmp_path / "plan.svg"
    snap_file = tmp_path / "gpt.json"
    done = stagecut(
        "plan", "--cut", "blocks.1", "--cut", "blocks.3", "--cut", "blocks.5", "--schedule", "1f1b",
        "--microbatches", "8", "--optimizer", "adam", "--dtype", "bfloat16", "--bandwidth", "10GB/s",
        "--max-memory", "600kB", "--json", str(out), "--svg", str(svg), "--save-snapshot", str(snap_file),
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "memory and traffic: 1f1b, 8 microbatches on 4 ranks, adam, bfloat16" in text
    assert re.search(r"stage rank +weights +recv buf +act/mb +flight +peak +sent +direct", text)
    assert "bubble: 27.3% of ranks x step with equal stages" in text
    assert re.search(r"transfers [0-9.]+ (s|ms|us|ns) per\s+step\s+at\s+10.0GB/s", text)
    assert "max memory 600.0kB:" in text
    # The JSON: the plan as Plan.from_json reads it, plus the figures under "training".
    doc = json.loads(out.read_text())
    training = doc["training"]
    assert training["schedule"] == "1f1b" and training["microbatches"] == 8 and training["dtype"] == "bfloat16"
    assert [s["in_flight"] for s in training["stages"]] == [4, 3, 2, 1]
    read = Plan.from_json(out.read_text())
    snap = Snapshot.from_json(snap_file.read_text())
    again = figures(read, snap, schedule="1f1b", microbatches=8, optimizer="adam", dtype="bfloat16", bandwidth=10e9)
    assert [s["peak"] for s in training["stages"]] == [s.memory.peak for s in again.stages]
    assert [s["send_hops"] for s in training["stages"]] == [s.comm.send_hops for s in again.stages]
    over = [s["index"] for s in training["stages"] if s["peak"] > 600e3]
    for index in over:
        assert re.search(rf"^ +{index} .* over$", text, re.M)
    chart = svg.read_text()
    assert "max memory 600.0kB" in chart and "activations in flight" in chart


def test_stages_under_max_memory(tmp_path: Path) -> None:
    """--stages with --max-memory picks cuts whose every stage fits; the cap below the smallest
    achievable peak is a one-line error naming it."""
    out = tmp_path / "plan.json"
    common = ("plan", "-o", "n_layers=6", "--stages", "4", "--microbatches", "8")
    done = stagecut(*common, "--max-memory", "600kB", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "each under 600.0kB" in done.stdout
    peaks = [s["peak"] for s in json.loads(out.read_text())["training"]["stages"]]
    assert max(peaks) <= 600e3
    free = stagecut(*common, "--schedule", "1f1b", "--json", str(out))
    assert free.returncode == 0
    free_peaks = [s["peak"] for s in json.loads(out.read_text())["training"]["stages"]]
    assert max(free_peaks) > 600e3  # the cap changed the cuts
    tight = stagecut(*common, "--max-memory", "100kB")
    assert tight.returncode == 2
    assert ERROR.match(tight.stderr)
    assert "smallest achievable peak is" in tight.stderr and "raise the cap" in tight.stderr


def test_snapshot_file_without_torch(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """From --snapshot (torch blocked) the figures come from core alone; a module core has no
    rule for and cannot measure there is named as assumed."""
    pytest.importorskip("transformers")
    snap_file = tmp_path / "llama.json"
    saved = stagecut("snapshot", "--model", "adapters.hf_models:make", "-o", "name=llama", "--out", str(snap_file))
    assert saved.returncode == 0, saved.stderr
    blocked = tmp_path_factory.mktemp("no_torch")
    (blocked / "torch").mkdir()
    (blocked / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked by this test')\n")
    done = stagecut("plan", "--snapshot", str(snap_file), "--stages", "2", "--schedule", "gpipe", block_torch=blocked)
    assert done.returncode == 0, done.stderr
    assert "activations assumed (no rule, not measured" in done.stdout
    assert "LlamaDecoderLayer" in done.stdout
    # From the model, the blocks are measured: nothing assumed.
    measured = stagecut("plan", "--model", "adapters.hf_models:make", "-o", "name=llama", "--stages", "2", "--schedule", "gpipe")
    assert measured.returncode == 0, measured.stderr
    assert "assumed" not in measured.stdout


def test_measured_costs_predict_the_step() -> None:
    done = stagecut("plan", "--cut", "blocks.3", "--cost", "measured", "--schedule", "gpipe", "--microbatches", "4")
    assert done.returncode == 0, done.stderr
    assert re.search(r"predicted step [0-9.]+ (s|ms|us)\s+with\s+the\s+measured\s+costs\s+\(bubble [0-9.]+%\)", done.stdout)


def test_usage_errors() -> None:
    for args, message in [
        (("--max-memory", "80XB"), "--max-memory"),
        (("--bandwidth", "fast"), "--bandwidth"),
        (("--schedule", "1f1b", "--microbatches", "2"), "microbatches"),
        (("--schedule", "interleaved", "--stages", "3", "--ranks", "2"), "spread evenly"),
    ]:
        done = stagecut("plan", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert ERROR.match(done.stderr) and message in done.stderr, (args, done.stderr)


def test_plan_without_figure_options_is_unchanged() -> None:
    """No figure option: the plan output is what it was (docs/cli.md's examples)."""
    done = stagecut("plan")
    assert done.returncode == 0
    assert "memory and traffic" not in done.stdout
