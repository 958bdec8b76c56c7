"""`stagecut train --plan FILE`: train the plan a user reviewed, read back from its JSON. The
file is data (issue 13): it may call only the allow-list and the modules named with
`--trust-module`, and it must fit the model; everything is checked before a rank starts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import torch
from torch import nn

torch.fx.wrap("scaled")


def scaled(x):
    return x * 2


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.first = nn.Linear(width, width)
        self.second = nn.Linear(width, width)

    def forward(self, x):
        return self.second(scaled(self.first(x)))


def make(width=8):
    return Net(width), (torch.randn(8, width),)
'''


def _cli(*args: str, cwd: Path | None = None, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([str(path), root] if path else [root])
    return subprocess.run([sys.executable, "-m", "adapters.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    (folder / "stagecut_probe_layers.py").write_text(PROBE)
    return folder


@pytest.fixture(scope="module")
def gpt_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plan of the example `train` builds (gpt, 4 blocks, batch 8), with its figures."""
    out = tmp_path_factory.mktemp("plan") / "gpt.json"
    run = _cli("plan", "--model", "gpt", "-o", "n_layers=4", "-o", "batch=8", "--cut", "blocks.1",
               "--microbatches", "4", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "training" in json.loads(out.read_text())  # the figures ride along; train reads past them
    return out


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_train_runs_a_plan_file_and_matches_one_process(gpt_plan: Path, engine: str) -> None:
    if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    schedule = ["--schedule", "gpipe"] if engine == "torch" else []
    run = _cli("train", "--plan", str(gpt_plan), "--engine", engine, *schedule, "--steps", "2")
    assert run.returncode == 0, run.stderr
    assert f"plan {gpt_plan}, 2 stages (cuts after:blocks.1)" in run.stdout
    assert "check: matches the single-process run" in run.stdout


def test_a_plan_file_calling_os_system_is_refused_before_any_rank_starts(gpt_plan: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    doc = json.loads(gpt_plan.read_text())
    graph = doc["stages"][1]["graph"]
    graph.insert(len(graph) - 1, {"name": "evil", "op": "call_function", "target": "os.system",
                                  "args": [f"touch {marker}"]})
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(doc))
    run = _cli("train", "--plan", str(crafted), "--steps", "1")
    assert run.returncode == 2, run.stderr
    assert "'os.system' is not on the allow-list" in run.stderr and "--trust-module os" in run.stderr
    assert "Traceback" not in run.stderr and "processes" not in run.stdout  # refused in the parent
    assert not marker.exists()


def test_trust_module_lets_a_plan_call_the_functions_of_a_named_module(probe: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    run = _cli("plan", "--model", "stagecut_probe_layers:make", "--cut", "first", "--json", str(out), path=probe)
    assert run.returncode == 0, run.stderr
    assert "stagecut_probe_layers.scaled" in out.read_text()  # fx kept the wrapped function as a call
    refused = _cli("train", "--model", "stagecut_probe_layers:make", "--plan", str(out), "--steps", "1", path=probe)
    assert refused.returncode == 2, refused.stderr
    assert "'stagecut_probe_layers.scaled' is not on the allow-list" in refused.stderr
    assert "--trust-module stagecut_probe_layers" in refused.stderr
    trusted = _cli("train", "--model", "stagecut_probe_layers:make", "--plan", str(out), "--steps", "2",
                   "--trust-module", "stagecut_probe_layers", path=probe)
    assert trusted.returncode == 0, trusted.stderr
    assert "check: matches the single-process run" in trusted.stdout


def test_a_plan_made_for_another_size_of_the_model_is_refused(probe: Path, tmp_path: Path) -> None:
    out = tmp_path / "narrow.json"
    assert _cli("plan", "--model", "stagecut_probe_layers:make", "--cut", "first", "--json", str(out),
                path=probe).returncode == 0
    run = _cli("train", "--model", "stagecut_probe_layers:make", "-o", "width=16", "--plan", str(out),
               "--trust-module", "stagecut_probe_layers", "--steps", "1", path=probe)
    assert run.returncode == 2, run.stderr
    assert "stage 0's parameters (first.bias, first.weight) hold 72 elements in the plan but 272" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "p.json", "--cut", "blocks.0"], "leave out --cut, --stages and --tracer"),
        (["--plan", "p.json", "--tracer", "fx"], "leave out --cut, --stages and --tracer"),
        (["--trust-module", "os"], "--trust-module widens what a --plan file may call"),
        (["--plan", "p.json", "--trust-module", "not a module"], "give a module name"),
        (["--stages", "2", "--cut", "blocks.0"], "give one or the other"),
        (["--plan", "missing.json"], "cannot read plan 'missing.json'"),
    ],
)
def test_plan_arguments_are_checked_before_anything_runs(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{}")
    run = _cli("train", *args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_a_malformed_plan_file_names_the_json_path(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"stages": "x"}))
    run = _cli("train", "--plan", "p.json", cwd=tmp_path)
    assert run.returncode == 2
    assert "$." in run.stderr and "Traceback" not in run.stderr
