"""Hugging Face models: stagecut's export frontend next to torch's `pipeline()` (issue 9).

    PYTHONPATH=. .venv/bin/python bench/hf_models.py                 # everything (a few minutes)
    PYTHONPATH=. .venv/bin/python bench/hf_models.py --quick         # llama at 8/32 layers, no 70B
    PYTHONPATH=. .venv/bin/python bench/hf_models.py --only t5 --only llama-128
    PYTHONPATH=. .venv/bin/python bench/hf_models.py --only meta-70b

Three parts, each a table (`--only` takes a name from a part, or the part's name):

1. `tiny`: every model of `adapters.hf_models.HF_MODELS` with 4 layers, cut after every block
   but the last (4 stages; t5: 8 blocks, encoder then decoder, cut after every other one).
   Names: gpt2, llama, ..., vit.
2. `scaling`: the tiny LLaMA with 32 and 128 layers (`--quick`: 8 and 32), cut into 8 equal
   stages; then stagecut's seconds per layer at both depths (flat means linear).
   Names: llama-32, llama-128 (llama-N for any N).
3. `meta`: Llama 2 7B and 70B on the meta device (`build_on_meta(llama_config(...))`):
   a snapshot without cuts, `core.balance(..., 8, cost=costs.params)`, the snapshot by need
   at those cuts, `core.plan`; wall time of each, peak RSS, and each stage's parameter bytes.
   Each size runs in a child process of its own, so its peak RSS is its own: VmHWM from
   /proc/self/status (`ru_maxrss` is shown too, but Linux carries the parent's peak into it).
   Names: meta-7b, meta-70b.

For parts 1 and 2, on the same model and the same cuts, in this process:

- stagecut: `snapshot(model, **inputs, cuts=cuts, tracer="export")` + `core.plan(snap, cuts)`
  + `stage_modules(plan, model)`; then `run_stages(modules, **inputs)` against
  `model(**inputs)` (max |difference| over every tensor of the output);
- torch: `torch.distributed.pipelining.pipeline(model, (), mb_kwargs=inputs,
  split_spec={X: SplitPoint.END for each cut after:X})`, which builds the `Pipe` only (no
  process group). It runs second, since it rewrites the forward of the modules it splits at.

One run of each (wall seconds, and this process's CPU seconds in parentheses); a warm-up of
both on a 2-layer llama runs first, charged to no row. Ratio: torch over stagecut.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import core  # noqa: E402
from adapters.fx import snapshot  # noqa: E402  (adapters.frontend's; see the note in main)
from adapters.graph.stages import run_stages, stage_modules  # noqa: E402
from adapters.hf_models import HF_MODELS, build, build_on_meta, llama_config  # noqa: E402
from core import costs  # noqa: E402
from core.cuts import as_cut  # noqa: E402

TINY_LAYERS = 4
TINY_STAGES = 4
SCALING_STAGES = 8
SCALING_LAYERS = (32, 128)
QUICK_SCALING_LAYERS = (8, 32)
META_SIZES = ("7b", "70b")
META_STAGES = 8
GOAL_RATIO = 5.0  # torch pipeline() over stagecut, at 128 layers
GOAL_70B_SECONDS = 60.0
GOAL_70B_MB = 4096.0

T = TypeVar("T")

# torch's pytree warns about its own use of a deprecated LeafSpec check, once per export.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


# ---------------------------------------------------------------------------
# helpers


def _maxrss_mb() -> float:
    """`ru_maxrss`. On Linux it carries over the parent's peak through fork and exec: a child
    started by a parent of 700 MB reports at least 700 MB (see `_peak_mb`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _peak_mb() -> float:
    """This process's own peak RSS: VmHWM of /proc/self/status (the high-water mark of its
    address space, new at exec), or `ru_maxrss` where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return _maxrss_mb()


def _mb(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    return f"{nbytes / 1e6:.1f}MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f}kB"


def _timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """(wall seconds, CPU seconds of this process, result) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _why(err: BaseException) -> str:
    """The error's first line, and its cause's (pipeline() wraps every export failure in one
    generic RuntimeError, whose cause says what went wrong)."""
    text = _first_line(err)
    cause = err.__cause__
    if cause is not None:
        text += f" <- {_first_line(cause)}"
    return text


def blocks_of(model: nn.Module) -> list[str]:
    """The model's numbered blocks in execution order: the children of its largest module lists
    (every list at least half the largest, so an encoder's and a decoder's), in module order."""
    modules = dict(model.named_modules())
    stacks = {p: m for p, m in modules.items() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2}
    sizes = {p: sum(t.numel() for t in m.parameters()) for p, m in stacks.items()}
    largest = max(sizes.values())
    return [f"{p}.{name}" for p, m in stacks.items() if sizes[p] * 2 >= largest for name, _ in m.named_children()]


def even_cuts(blocks: Sequence[str], stages: int) -> list[str]:
    """`stages - 1` cuts after blocks, `stages` runs of equally many blocks."""
    n = len(blocks)
    return [f"after:{blocks[k * n // stages - 1]}" for k in range(1, stages)]


def _tensors(value: Any) -> list[Tensor]:
    """The tensors of a model output (ModelOutput is a dict), depth first."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def max_abs_diff(a: Any, b: Any) -> float:
    """Max |a - b| over the outputs' tensors; inf when their structure or shapes differ."""
    ta, tb = _tensors(a), _tensors(b)
    if not ta or len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return float("inf")
    return max((x.double() - y.double()).abs().max().item() if x.numel() else 0.0 for x, y in zip(ta, tb))


# ---------------------------------------------------------------------------
# parts 1 and 2: stagecut and pipeline() on one model


def stagecut(model: nn.Module, inputs: dict[str, Any], cuts: Sequence[str]) -> tuple[dict[str, float], list[Any]]:
    times: dict[str, float] = {}
    wall, cpu, snap = _timed(lambda: snapshot(model, cuts=cuts, tracer="export", **inputs))
    times["snapshot"], times["snapshot_cpu"] = wall, cpu
    wall, cpu, plan = _timed(lambda: core.plan(snap, cuts))
    times["plan"], times["plan_cpu"] = wall, cpu
    wall, cpu, modules = _timed(lambda: stage_modules(plan, model))
    times["stages"], times["stages_cpu"] = wall, cpu
    times["total"] = times["snapshot"] + times["plan"] + times["stages"]
    times["total_cpu"] = times["snapshot_cpu"] + times["plan_cpu"] + times["stages_cpu"]
    times["num_stages"] = len(plan.stages)
    return times, list(modules)


def torch_pipeline(model: nn.Module, inputs: dict[str, Any], cuts: Sequence[str]) -> dict[str, Any]:
    from torch.distributed.pipelining import SplitPoint, pipeline

    spec = {as_cut(c).path: SplitPoint.END for c in cuts}
    assert all(as_cut(c).side == "after" for c in cuts)
    try:
        wall, cpu, pipe = _timed(lambda: pipeline(model, (), mb_kwargs=inputs, split_spec=spec))
    except Exception as err:  # noqa: BLE001 - a failure is a result here
        return {"error": _why(err)}
    return {"total": wall, "total_cpu": cpu, "num_stages": pipe.num_stages}


def compare(name: str, model: nn.Module, inputs: dict[str, Any], cuts: Sequence[str], failures: list[str]) -> dict[str, Any]:
    """One row: stagecut (timed, then checked against the model), then torch's pipeline()."""
    row: dict[str, Any] = {"name": name, "cuts": len(cuts)}
    try:
        row["ours"], modules = stagecut(model, inputs, cuts)
        with torch.no_grad():
            row["diff"] = max_abs_diff(run_stages(modules, **inputs), model(**inputs))
    except Exception as err:  # noqa: BLE001 - reported with its traceback under the table
        row["ours"] = {"error": _first_line(err)}
        failures.append(f"{name}: stagecut failed\n{traceback.format_exc()}")
    row["torch"] = torch_pipeline(model, inputs, cuts)
    return row


def _cell(part: dict[str, Any], width: int) -> str:
    if "error" in part:
        return "fails".rjust(width)
    return f"{part['total']:.2f} ({part['total_cpu']:.2f})".rjust(width)


HEAD = (
    f"{'model':<13} {'layers':>6} {'stages':>6} | {'snapshot':>8} {'plan':>6} {'modules':>7} "
    f"{'stagecut':>13} | {'pipeline()':>13} {'ratio':>6} | {'max|diff|':>9}"
)


def print_row(row: dict[str, Any], layers: int) -> None:
    ours, theirs = row["ours"], row["torch"]
    ok = "error" not in ours
    phases = (
        f"{ours['snapshot']:>8.2f} {ours['plan']:>6.3f} {ours['stages']:>7.3f}" if ok else f"{'-':>8} {'-':>6} {'-':>7}"
    )
    ratio = f"{theirs['total'] / ours['total']:.1f}x" if ok and "error" not in theirs else "-"
    diff = f"{row['diff']:.1e}" if "diff" in row else "-"
    stages = int(ours["num_stages"]) if ok else row["cuts"] + 1
    line = (
        f"{row['name']:<13} {layers:>6} {stages:>6} | {phases} {_cell(ours, 13)} | "
        f"{_cell(theirs, 13)} {ratio:>6} | {diff:>9}"
    )
    notes = []
    if not ok:
        notes.append(f"stagecut fails: {ours['error']}")
    if "error" in theirs:
        notes.append(f"pipeline() fails: {theirs['error']}")
    elif ok and theirs["num_stages"] != ours["num_stages"]:
        notes.append(f"pipeline() made {theirs['num_stages']} stages")
    print(line, flush=True)
    for note in notes:
        print(f"{'':<13}   {note[:200]}", flush=True)


def warm_up() -> None:
    """Fake-tensor, export and pipelining start-up costs, charged to no row."""
    ex = build("llama", n_layers=2)
    stagecut(ex.model, ex.kwargs, ["after:model.layers.0"])
    torch_pipeline(ex.model, ex.kwargs, ["after:model.layers.0"])


def tiny(names: Sequence[str], failures: list[str]) -> None:
    print(f"\n== 1. tiny models, {TINY_LAYERS} layers, cut after every block but the last ==")
    print(HEAD)
    print("-" * len(HEAD))
    for name in names:
        ex = build(name, n_layers=TINY_LAYERS)
        blocks = blocks_of(ex.model)
        cuts = even_cuts(blocks, min(TINY_STAGES, len(blocks)))
        print_row(compare(name, ex.model, ex.kwargs, cuts, failures), TINY_LAYERS)


def scaling(depths: Sequence[int], failures: list[str]) -> None:
    print(f"\n== 2. tiny llama, {SCALING_STAGES} equal stages ==")
    print(HEAD)
    print("-" * len(HEAD))
    rows: dict[int, dict[str, Any]] = {}
    for layers in depths:
        ex = build("llama", n_layers=layers)
        cuts = even_cuts(blocks_of(ex.model), SCALING_STAGES)
        rows[layers] = compare(f"llama-{layers}", ex.model, ex.kwargs, cuts, failures)
        print_row(rows[layers], layers)
    ok = {n: r for n, r in rows.items() if "error" not in r["ours"]}
    if len(ok) >= 2:
        print("\nstagecut per layer (wall / CPU ms), flat means linear:")
        for n, r in ok.items():
            print(f"  {n:>4} layers: {1e3 * r['ours']['total'] / n:7.1f} / {1e3 * r['ours']['total_cpu'] / n:7.1f}")
        (a, ra), (b, rb) = min(ok.items()), max(ok.items())
        for label, key in (("wall", "total"), ("CPU", "total_cpu")):
            per_a, per_b = ra["ours"][key] / a, rb["ours"][key] / b
            marginal = (rb["ours"][key] - ra["ours"][key]) / (b - a)
            print(
                f"  {label}: per-layer {b} vs {a}: {per_b / per_a:.2f}x; "
                f"marginal cost {1e3 * marginal:.1f} ms/layer, fixed cost {ra['ours'][key] - a * marginal:.2f} s"
            )
    deepest = max(rows)
    r = rows[deepest]
    if deepest >= 128 and "error" not in r["ours"] and "error" not in r["torch"]:
        ratio = r["torch"]["total"] / r["ours"]["total"]
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        print(f"goal: >= {GOAL_RATIO:g}x faster than pipeline() at {deepest} layers: {ratio:.1f}x, {verdict}")


# ---------------------------------------------------------------------------
# part 3: full-size llama on the meta device, one child process per size


def meta(size: str) -> dict[str, Any]:
    """Runs in a child: build, snapshot, balance, snapshot by need, plan; times and peak RSS."""
    result: dict[str, Any] = {"size": size, "rss_start_mb": _peak_mb()}
    wall, _, ex = _timed(lambda: build_on_meta(llama_config(size)))
    model, inputs = ex.model, ex.kwargs
    result["build"], result["rss_built_mb"] = wall, _peak_mb()
    result["params"] = sum(p.numel() for p in model.parameters())
    start, start_cpu = time.perf_counter(), time.process_time()
    wall, _, whole = _timed(lambda: snapshot(model, tracer="export", **inputs))
    result["snapshot_all"] = wall
    wall, _, cuts = _timed(lambda: core.balance(whole, META_STAGES, cost=costs.params))
    result["balance"] = wall
    wall, _, snap = _timed(lambda: snapshot(model, cuts=cuts, tracer="export", **inputs))
    result["snapshot_cuts"] = wall
    wall, _, plan = _timed(lambda: core.plan(snap, cuts))
    result["plan"] = wall
    result["total"], result["total_cpu"] = time.perf_counter() - start, time.process_time() - start_cpu
    result["rss_peak_mb"], result["maxrss_mb"] = _peak_mb(), _maxrss_mb()
    result["cuts"] = [str(c) for c in cuts]
    result["param_bytes"] = [s.figures.param_bytes for s in plan.stages]
    result["bytes_in"] = [s.figures.bytes_in for s in plan.stages]
    result["modules"] = [_span(s.modules) for s in plan.stages]
    return result


def _span(modules: Sequence[str]) -> str:
    return f"{modules[0]} .. {modules[-1]}" if len(modules) > 1 else (modules[0] if modules else "-")


def run_meta(size: str, threads: int, failures: list[str]) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--meta-child", size, "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        failures.append(f"meta-{size}: the child process failed (exit {done.returncode})\n{done.stderr.strip()}")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def print_meta(results: Sequence[dict[str, Any]]) -> None:
    head = (
        f"{'model':<10} {'params':>7} {'build':>6} | {'snap all':>8} {'balance':>7} {'snap cuts':>9} {'plan':>6} "
        f"{'total':>13} | {'RSS start':>9} {'built':>7} {'peak':>7} | {'ru_maxrss':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"llama-{r['size']:<4} {r['params'] / 1e9:>6.2f}B {r['build']:>6.2f} | {r['snapshot_all']:>8.2f} "
            f"{r['balance']:>7.3f} {r['snapshot_cuts']:>9.2f} {r['plan']:>6.3f} "
            f"{r['total']:>6.2f} ({r['total_cpu']:.2f}) | {r['rss_start_mb']:>7.0f}MB {r['rss_built_mb']:>5.0f}MB "
            f"{r['rss_peak_mb']:>5.0f}MB | {r['maxrss_mb']:>7.0f}MB",
            flush=True,
        )
    for r in results:
        print(f"\nllama-{r['size']}: cuts {', '.join(r['cuts'])}")
        print(f"  {'stage':>5} {'param bytes':>15} {'GB':>7} {'in/mb':>9}  modules")
        for i, (nbytes, nin, mods) in enumerate(zip(r["param_bytes"], r["bytes_in"], r["modules"])):
            print(f"  {i:>5} {nbytes:>15,} {nbytes / 1e9:>7.2f} {_mb(nin):>9}  {mods}")
        total = sum(r["param_bytes"])
        print(f"  {'sum':>5} {total:>15,} {total / 1e9:>7.2f}  (max/mean {max(r['param_bytes']) * len(r['param_bytes']) / total:.3f})")
        if r["size"] == "70b":
            ok_s, ok_m = r["total"] < GOAL_70B_SECONDS, r["rss_peak_mb"] < GOAL_70B_MB
            print(
                f"  goal: plan under {GOAL_70B_SECONDS:g} s: {r['total']:.1f} s, {'met' if ok_s else 'NOT met'}; "
                f"under {GOAL_70B_MB / 1024:g} GB peak RSS: {r['rss_peak_mb'] / 1024:.2f} GB, {'met' if ok_m else 'NOT met'}"
            )


# ---------------------------------------------------------------------------


def _selected(only: Sequence[str] | None, quick: bool) -> tuple[list[str], list[int], list[str]]:
    """(tiny model names, llama depths, meta sizes) that `--only` and `--quick` select."""
    depths = list(QUICK_SCALING_LAYERS if quick else SCALING_LAYERS)
    sizes = ["7b"] if quick else list(META_SIZES)
    if not only:
        return list(HF_MODELS), depths, sizes
    names: list[str] = []
    chosen_depths: list[int] = []
    chosen_sizes: list[str] = []
    for item in only:
        if item == "tiny":
            names += HF_MODELS
        elif item == "scaling":
            chosen_depths += depths
        elif item == "meta":
            chosen_sizes += sizes
        elif item in HF_MODELS:
            names.append(item)
        elif item.startswith("llama-") and item.removeprefix("llama-").isdigit():
            chosen_depths.append(int(item.removeprefix("llama-")))
        elif item.startswith("meta-") and item.removeprefix("meta-") in META_SIZES:
            chosen_sizes.append(item.removeprefix("meta-"))
        else:
            raise SystemExit(
                f"--only {item}: expected tiny, scaling, meta, one of {', '.join(HF_MODELS)}, llama-<layers>, "
                f"or meta-{'/meta-'.join(META_SIZES)}"
            )
    return list(dict.fromkeys(names)), sorted(set(chosen_depths)), list(dict.fromkeys(chosen_sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this part or model (repeatable)")
    parser.add_argument("--quick", action="store_true", help="llama at 8 and 32 layers; meta: 7B only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--meta-child", choices=META_SIZES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.meta_child is not None:
        print(json.dumps(meta(args.meta_child)))
        return

    names, depths, sizes = _selected(args.only, args.quick)
    failures: list[str] = []
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s), "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print("seconds: wall (CPU of the process), one run each; ratio: pipeline() over stagecut (wall)")
    if names or depths:
        warm_up()
    if names:
        tiny(names, failures)
    if depths:
        scaling(depths, failures)
    if sizes:
        print(f"\n== 3. Llama 2 on the meta device, {META_STAGES} stages balanced by parameter bytes ==")
        print("seconds, wall; total: snapshot (all) + balance + snapshot (cuts) + plan, wall (CPU);")
        print("RSS: the child process's own peak (VmHWM) after imports, after building the model, at the end;")
        print("ru_maxrss: the same peak as getrusage reports it, which includes this parent's (Linux keeps it")
        print("through fork and exec)")
        results = [r for r in (run_meta(size, args.threads, failures) for size in sizes) if r is not None]
        if results:
            print_meta(results)
    for failure in failures:
        print(f"\n== failure: {failure}")
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
