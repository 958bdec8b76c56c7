"""`stagecut train` as a user runs it: processes, per-step lines, and the final check."""

from __future__ import annotations

import re
import subprocess
import sys


def test_train_runs_the_engine_and_checks_against_one_process() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "train", "--stages", "2", "--schedule", "gpipe", "--steps", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    steps = re.findall(r"step (\d)/2  loss (\d+\.\d+)  ([\d,]+) tokens/s", run.stdout)
    assert [s[0] for s in steps] == ["1", "2"]
    assert "check: matches the single-process run" in run.stdout


def test_train_rejects_an_unknown_schedule() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "train", "--schedule", "zigzag"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert "unknown schedule 'zigzag'" in run.stderr and "Traceback" not in run.stderr


def test_train_a_transformers_model_from_a_factory() -> None:
    """`--model package.module:factory -o ...`: a real model, traced with export, trained on the engine."""
    run = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "train", "--model", "adapters.hf_models:make", "-o", "name=llama",
         "-o", "n_layers=2", "-o", "batch=8", "-o", "dtype=torch.float64", "--stages", "2", "--steps", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    steps = re.findall(r"step (\d)/2  loss (\d+\.\d+)  ([\d,]+) tokens/s", run.stdout)
    assert [s[0] for s in steps] == ["1", "2"] and all(s[2] != "0" for s in steps)
    assert "cuts after:model.layers.0" in run.stdout
    assert "check: matches the single-process run" in run.stdout
