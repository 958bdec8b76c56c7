"""`stagecut train --engine deepspeed` as a user runs it, and its one-line usage errors."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from typing import Any

import pytest

from adapters.cli import main


def test_train_on_deepspeed_checks_against_one_process() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "train", "--engine", "deepspeed", "--stages", "2", "--steps", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "2 stages (cuts after:blocks.1), DeepSpeed, 1f1b, 2 processes" in run.stdout
    steps = re.findall(r"step (\d)/2  loss (\d+\.\d+)  ([\d,]+) tokens/s", run.stdout)
    assert [s[0] for s in steps] == ["1", "2"]
    assert "check: matches the single-process run" in run.stdout


def _usage_error(args: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    assert code == 2
    return err.getvalue()


def test_without_deepspeed_the_engine_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def hide_deepspeed(name: str, *more: Any) -> Any:
        return None if name == "deepspeed" else real(name, *more)

    monkeypatch.setattr(importlib.util, "find_spec", hide_deepspeed)
    message = _usage_error(["train", "--engine", "deepspeed"])
    assert message.count("\n") == 1 and "DS_BUILD_OPS=0 pip install 'stagecut[deepspeed]'" in message


@pytest.mark.parametrize("args, says", [
    (["--engine", "megatron"], "unknown engine 'megatron'"),
    (["--engine", "deepspeed", "--schedule", "gpipe"], "DeepSpeed's own 1F1B"),
    (["--engine", "deepspeed", "--stages", "4", "--processes", "2"], "one stage per process"),
    (["--checkpointing"], "--checkpointing needs --engine deepspeed"),
])
def test_engine_usage_errors(args: list[str], says: str) -> None:
    message = _usage_error(["train", *args])
    assert says in message and "Traceback" not in message
