"""The command line keeps its promise under bad input (issue 13): exit code 0 or 2 with one line
for every mutated snapshot, `stagecut train` refuses bad arguments before spawning anything and
names a stopped rank, output files are never left half written, a full or closed stdout is one
line, and terminal control characters in a snapshot are shown escaped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.cli import files, main
from tests.hardening_mutants import CUTS, base_documents, mutate

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "adapters.cli"]


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, **kwargs)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- mutated snapshots through the command line -------------------------------------------------


def test_a_sample_of_mutants_through_the_cli_exits_0_or_2_never_1(tmp_path: Path) -> None:
    base = base_documents()["snapshot"]
    rng = random.Random(13)
    codes = []
    for k in range(12):
        path = tmp_path / f"mutant{k}.json"
        path.write_text(mutate(base, rng))
        for args in (["plan", "--snapshot", str(path), "--cut", CUTS[0]], ["inspect", "--snapshot", str(path)]):
            if k % 2 and args[0] == "inspect":
                continue  # inspect on half of them: each run starts a Python
            run = _run(args)
            assert run.returncode in (0, 2), (args, run.stderr)
            assert "Traceback" not in run.stderr, run.stderr
            if run.returncode == 2:
                assert _one_line(run.stderr).startswith("stagecut: error: ")
            codes.append(run.returncode)
    assert 2 in codes  # most mutants are refused; the test would be empty otherwise


# -- stagecut train: arguments refused up front -------------------------------------------------

TRAIN_ERRORS = [
    (["--microbatches", "0"], "--microbatches 0: it must be at least 1"),
    (["--batch", "0"], "--batch 0: it must be at least 1"),
    (["--steps", "0"], "--steps 0: it must be at least 1"),
    (["--steps", "-1"], "--steps -1: it must be at least 1"),
    (["--stages", "0"], "--stages 0: it must be at least 1"),
    (["--stages", "-2"], "--stages -2: it must be at least 1"),
    (["--processes", "0"], "--processes 0: it must be at least 1"),
    (["--lr", "nan"], "--lr nan: the learning rate must be a finite number > 0"),
    (["--lr", "-0.1"], "--lr -0.1: the learning rate must be a finite number > 0"),
    (["--timeout", "inf"], "--timeout inf: it must be a finite number of seconds > 0"),
    (["--batch", "6", "--microbatches", "4"], "--batch 6 does not split into --microbatches 4"),
    (["--cut", "blocks.9"], "cut 'blocks.9': no module has this path"),
    (["--cut", "blocks"], "cut 'blocks': this module is never called"),
    (["--stages", "4", "--processes", "3", "--schedule", "interleaved"], "4 stages do not spread evenly over 3 processes"),
    (["--stages", "4", "--processes", "2", "--schedule", "gpipe"], "schedule 'gpipe' runs one stage per process"),
    (["--stages", "3", "--microbatches", "2", "--batch", "8"], "schedule '1f1b' needs at least as many microbatches"),
    (["--model", "adapters.hf_models:make", "-o", "n_layers=abc"], "--model adapters.hf_models:make"),
]


@pytest.mark.parametrize("args, expected", TRAIN_ERRORS, ids=[" ".join(a) for a, _ in TRAIN_ERRORS])
def test_train_refuses_bad_arguments_with_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.launch

    def no_spawn(*_: Any, **__: Any) -> None:
        raise AssertionError("train spawned processes for a bad argument")

    monkeypatch.setattr(adapters.launch, "launch", no_spawn)
    assert main(["train", *args]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("stagecut: error: ") and expected in line, line


def test_train_argument_error_as_a_user_sees_it() -> None:
    run = _run(["train", "--microbatches", "0"])
    assert run.returncode == 2
    assert _one_line(run.stderr) == "stagecut: error: --microbatches 0: it must be at least 1"


def _rank_pids(parent: int) -> list[int]:
    """The ranks `launch` spawned under the CLI process, in start order."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return sorted(found)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_train_names_a_rank_stopped_with_sigstop_within_the_timeout() -> None:
    proc = subprocess.Popen(
        [*CLI, "train", "--stages", "2", "--schedule", "gpipe", "--steps", "3000", "--no-check", "--timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    stopped: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # training has started once a step is reported
            if "step 1/" in line:
                break
        ranks = _rank_pids(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGSTOP)
        stopped.append(ranks[1])
        stop = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        elapsed = time.monotonic() - stop
    finally:
        for pid in stopped:  # whatever happened, leave nothing stopped behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    line = _one_line(stderr)
    assert "rank 1" in line and "made no progress" in line and "stopped" in line, line
    assert elapsed < 5 + 10  # the watchdog's time, and a margin for a busy machine


# -- output files, stdout -----------------------------------------------------------------------


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    files.write_text(str(target), "plan", "old plan")

    def interrupted(path: Path) -> None:
        with open(path, "w") as out:
            for _ in range(64):
                out.write("x" * (1 << 20))  # 64 MB written, then Ctrl-C
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write(str(target), "plan", interrupted)
    assert target.read_text() == "old plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from adapters.cli import files

def save(path):
    with open(path, "w") as out:
        for k in range(10000):
            out.write("y" * (1 << 16))
            out.flush()
            if k == 100:
                Path(sys.argv[2]).write_text("writing")
            time.sleep(0.001)

files.write(sys.argv[1], "snapshot", save)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_write_never_leaves_a_partial_file(tmp_path: Path, sig: signal.Signals) -> None:
    target, started = tmp_path / "big.json", tmp_path / "started"
    target.write_text("previous")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target), str(started)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert target.read_text() == "previous"  # the old file, whole
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("big.json", "started"))
    if sig == signal.SIGINT:
        assert left == []  # the temporary file was removed on the way out
    else:
        assert all(name.startswith(".big.tmp") for name in left)  # SIGKILL: only the temporary, if any


def test_a_full_or_closed_stdout_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(base_documents()["snapshot"]))
    with open("/dev/full", "w") as full:
        run = subprocess.run([*CLI, "plan", "--snapshot", str(path)], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 1
    assert "cannot write to standard output: No space left on device" in _one_line(run.stderr)
    closed = subprocess.run(" ".join([*CLI, "plan", "--snapshot", str(path)]) + " >&-", shell=True,
                            stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    assert closed.returncode == 1
    assert "standard output is closed" in _one_line(closed.stderr)


def test_control_characters_in_a_snapshot_are_escaped_on_output(tmp_path: Path) -> None:
    doc = base_documents()["snapshot"]
    doc["root"]["type"] = "Model\u001b[2J\u001b]0;owned\u0007"
    doc["root"]["children"]["emb"]["leaf_reason"] = "reason \u202eesrever\u001b[31m"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    for command in ("inspect", "plan"):
        run = _run([command, "--snapshot", str(path)])
        assert run.returncode == 0, run.stderr
        assert "\u001b" not in run.stdout and "\u202e" not in run.stdout and "\u0007" not in run.stdout
        assert "\\x1b[2J" in run.stdout
