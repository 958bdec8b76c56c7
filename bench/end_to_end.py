"""End to end: cut a deep GPT-like model into 8 equal stages, ours next to torch's frontend.

    PYTHONPATH=. .venv/bin/python bench/end_to_end.py [--blocks 64 256 1024] [--torch-timeout 600]

For each depth, on the same model and example input:

- ours, by need: `snapshot(model, x, cuts=...)` (traces only the spine, value info on fake
  tensors) + `core.plan` + `stage_modules`; also the same snapshot without example inputs
  (no value info), and a full hierarchical trace (no `cuts=`) for comparison;
- torch: `torch.distributed.pipelining.pipeline(model, (x,), split_spec={...: SplitPoint.END})`
  (torch.export + split), run in a child process with a time limit, so a failure or a hang at
  some size is reported rather than fatal.

The staged run is checked against the model once per depth. Timings are wall-clock seconds,
best of `--repeat` runs for ours (the first snapshot in a process also pays fake-tensor
warm-up, so a small warm-up model runs first).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import core  # noqa: E402
from adapters.examples import build  # noqa: E402
from adapters.fx import run_stages, snapshot, stage_modules  # noqa: E402

NUM_STAGES = 8
MODEL = dict(d_model=16, n_heads=2, vocab_size=64, max_seq=16, batch=2, seq=8)


def gpt(blocks: int) -> Any:
    return build("gpt", n_layers=blocks, **MODEL)


def cut_blocks(blocks: int) -> list[int]:
    """The last block of each stage but the last: 8 equal stages."""
    per = blocks // NUM_STAGES
    return [per * k - 1 for k in range(1, NUM_STAGES)]


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(best wall seconds, best CPU seconds of this process, result) over `repeat` runs."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, result


def ours(blocks: int, repeat: int, profile: Path | None) -> dict[str, Any]:
    ex = gpt(blocks)
    model, x = ex.model, ex.args[0]
    cuts = [f"blocks.{i}" for i in cut_blocks(blocks)]
    row: dict[str, Any] = {"blocks": blocks}

    def phase(name: str, fn: Callable[[], Any], times: int = repeat) -> Any:
        row[name], row[name + "_cpu"], result = timed(fn, times)
        return result

    snap = phase("snapshot", lambda: snapshot(model, x, cuts=cuts))
    plan = phase("plan", lambda: core.plan(snap, cuts))
    modules = phase("stage_modules", lambda: stage_modules(plan, model))
    for suffix in ("", "_cpu"):
        row["ours" + suffix] = sum(row[p + suffix] for p in ("snapshot", "plan", "stage_modules"))
    phase("ours_no_info", lambda: stage_modules(core.plan(snapshot(model, cuts=cuts), cuts), model))
    phase("full_trace", lambda: snapshot(model, x), 1)
    phase("full_trace_no_info", lambda: snapshot(model), 1)

    assert len(plan.stages) == NUM_STAGES
    assert all(s.figures.bytes_in is not None for s in plan.stages)
    with torch.no_grad():
        row["equal"] = bool(torch.equal(run_stages(modules, x), model(x)))

    if profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        plan = core.plan(snapshot(model, x, cuts=cuts), cuts)
        stage_modules(plan, model)
        profiler.disable()
        out = profile / f"ours_{blocks}.prof"
        profiler.dump_stats(str(out))
        print(f"\n== cProfile, ours with value info, {blocks} blocks (top 15 by own time) ==")
        pstats.Stats(str(out)).sort_stats("tottime").print_stats(15)
    return row


def torch_frontend(blocks: int) -> dict[str, Any]:
    """Runs in a child process: `pipeline()` with a split spec at the same blocks."""
    from torch.distributed.pipelining import SplitPoint, pipeline

    ex = gpt(blocks)
    spec = {f"blocks.{i}": SplitPoint.END for i in cut_blocks(blocks)}
    start, start_cpu = time.perf_counter(), time.process_time()
    pipe = pipeline(ex.model, (ex.args[0],), split_spec=spec)
    return {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - start_cpu,
        "stages": pipe.num_stages,
    }


def run_torch(blocks: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--torch-child", str(blocks)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"failed: {last[:160]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--torch-timeout", type=float, default=600.0)
    parser.add_argument("--no-torch", action="store_true", help="skip torch's pipeline() frontend")
    parser.add_argument("--profile", type=Path, help="write cProfile dumps of ours here and print hot spots")
    parser.add_argument("--torch-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.torch_child is not None:
        print(json.dumps(torch_frontend(args.torch_child)))
        return

    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    snapshot(gpt(8).model, gpt(8).args[0])  # fake-tensor warm-up, not charged to any row

    print(f"GPT-like model {MODEL}, {NUM_STAGES} equal stages, torch {torch.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPU(s); seconds, wall (CPU of the process)\n")
    head = (
        f"{'blocks':>6} | {'snapshot':>13} {'plan':>11} {'stages':>11} {'ours':>13} | "
        f"{'ours no-info':>13} | {'full trace':>13} {'full no-info':>13} | {'torch pipeline()':>17} "
        f"{'torch/ours':>11} | equal"
    )
    print(head)
    print("-" * len(head))

    def cell(row: dict[str, Any], name: str, width: int) -> str:
        return f"{row[name]:.3f} ({row[name + '_cpu']:.3f})".rjust(width)

    for blocks in args.blocks:
        row = ours(blocks, args.repeat, args.profile)
        theirs = {"error": "skipped"} if args.no_torch else run_torch(blocks, args.torch_timeout)
        if "seconds" in theirs:
            torch_s = f"{theirs['seconds']:.2f} ({theirs['cpu']:.2f})".rjust(17)
            ratio = f"{theirs['seconds'] / row['ours']:.0f}x ({theirs['cpu'] / row['ours_cpu']:.0f}x)".rjust(11)
        else:
            torch_s, ratio = "-".rjust(17), "-".rjust(11)
        print(
            f"{blocks:>6} | {cell(row, 'snapshot', 13)} {cell(row, 'plan', 11)} "
            f"{cell(row, 'stage_modules', 11)} {cell(row, 'ours', 13)} | {cell(row, 'ours_no_info', 13)} | "
            f"{cell(row, 'full_trace', 13)} {cell(row, 'full_trace_no_info', 13)} | {torch_s} {ratio} | "
            f"{row['equal']}" + (f"   torch: {theirs['error']}" if "error" in theirs else ""),
            flush=True,
        )
    print(
        "\nsnapshot/plan/stages/ours: by need (cuts=), value info from the example input (best of"
        f" {args.repeat});\nours no-info: snapshot without example inputs + plan + stages; full trace:"
        " snapshot without cuts=\n(every level traced), with/without value info (one run); torch:"
        " pipeline(model, (x,), split_spec)\n(one run, in a child process). Ratios: torch over ours"
        " (wall, and CPU)."
    )


if __name__ == "__main__":
    main()
