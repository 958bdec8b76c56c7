"""How `core.plan` scales with the number of nodes (run on demand, not part of pytest).

    PYTHONPATH=. .venv/bin/python bench/plan_scaling.py            # 1k .. 1M nodes, 8 and 64 stages
    PYTHONPATH=. .venv/bin/python bench/plan_scaling.py --sizes 1000 10000 --stages 8
    PYTHONPATH=. .venv/bin/python bench/plan_scaling.py --profile 100000   # cProfile of one plan
    PYTHONPATH=. .venv/bin/python bench/plan_scaling.py --with-gc          # without plan's GC pause

The synthetic model: the root embeds, calls a traced `layers` stack and a head. Every block of
the stack is a traced module (norm, attention returning a tuple, residual adds, MLP) returning
`(hidden, attn)`; the stack reads both items with getitem, adds a skip connection from three
blocks back, accumulates an auxiliary sum, and every block also reads the embedding (a value
live through every stage). Half of the cuts are after a block, half inside one (after its MLP),
so `layers` and the cut blocks are inlined (the spine), item reads are folded or moved to the
producing stage, and liveness carries several values across each boundary.

Each (size, stages) point runs in a fresh subprocess, so its peak RSS (`ru_maxrss`) is its own;
the table shows the build time and peak separately from `core.plan`'s time and memory growth.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import Cut, Snapshot, plan  # noqa: E402
from core.builder import GraphBuilder, module  # noqa: E402
from core.graph import ValueInfo  # noqa: E402
from core.snapshot import Module, Param  # noqa: E402

NODES_PER_BLOCK = 16  # 10 in the block's own graph, 6 in the stack's graph (see `build`)
INFO = ValueInfo("tensor", (8, 512, 1024), "bfloat16", 8 * 512 * 1024 * 2)


def _block(path: str) -> Module:
    g = GraphBuilder()
    x = g.placeholder("x", info=INFO)
    mask = g.placeholder("mask", info=INFO)
    h = g.call_module("ln", x, info=INFO)
    att = g.call_module("attn", h, mask)
    a = g.call_function("_operator.add", x, g.getitem(att, 0, info=INFO), info=INFO)
    m = g.call_module("mlp", a, info=INFO)
    out = g.call_function("_operator.add", a, m, info=INFO)
    graph = g.output((out, g.getitem(att, 1, info=INFO)))
    children = {
        "ln": module(f"{path}.ln", params={"weight": Param(f"{path}.ln", 1024, 2048)}),
        "attn": module(f"{path}.attn", params={"qkv": Param(f"{path}.qkv", 3 << 20, 6 << 20)}),
        "mlp": module(f"{path}.mlp", params={"fc": Param(f"{path}.fc", 8 << 20, 16 << 20)}),
    }
    return module(path, graph, children, type_name="Block")


def build(blocks: int) -> Snapshot:
    """A snapshot of about `NODES_PER_BLOCK * blocks` nodes."""
    g = GraphBuilder()  # the stack's graph: 6 nodes per block
    h = g.placeholder("h", info=INFO)
    mask = g.placeholder("mask", info=INFO)
    emb = g.placeholder("emb", info=INFO)
    aux = g.placeholder("aux", 0.0)
    history = [h]
    for i in range(blocks):
        t = g.call_module(str(i), h, mask)
        hidden = g.getitem(t, 0, info=INFO)
        skip = history[-3] if len(history) >= 3 else emb
        h = g.call_function("_operator.add", hidden, skip, info=INFO)
        h = g.call_function("torch.mul", h, emb, info=INFO)  # every block reads the embedding
        aux = g.call_function("_operator.add", aux, g.getitem(t, 1, info=INFO))
        history.append(h)
    stack = module("layers", g.output((h, aux)), {str(i): _block(f"layers.{i}") for i in range(blocks)})

    r = GraphBuilder()
    ids = r.placeholder("ids", info=INFO)
    mask_in = r.placeholder("mask", None, info=INFO)
    e = r.call_module("emb", ids, info=INFO)
    out = r.call_module("layers", e, mask_in, e)
    logits = r.call_module("head", r.getitem(out, 0, info=INFO), info=INFO)
    loss = r.call_function("_operator.add", logits, r.getitem(out, 1))
    tied = Param("emb.weight", 50 << 20, 100 << 20)
    children = {
        "emb": module("emb", params={"weight": tied}),
        "layers": stack,
        "head": module("head", params={"weight": tied}),
    }
    return Snapshot(module("", r.output(loss), children))


def cuts_for(blocks: int, stages: int) -> list[Cut]:
    """`stages - 1` evenly spaced cuts; every other one inside a block (after its MLP)."""
    out = []
    for k in range(1, stages):
        i = k * blocks // stages - 1
        out.append(Cut(f"layers.{i}.mlp") if k % 2 else Cut(f"layers.{i}"))
    return out


def count_nodes(snapshot: Snapshot) -> int:
    return sum(len(m.graph) for m in snapshot.modules.values() if m.graph is not None)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(nodes: int, stages: int, with_gc: bool = False) -> dict[str, float]:
    """One point, in this process: build, then plan (timed alone), with peak RSS after each.

    `with_gc`: run the passes with CPython's cyclic GC left on (`core.plan` pauses it), to see
    what that pause saves."""
    blocks = max(stages, round(nodes / NODES_PER_BLOCK))
    t0 = time.perf_counter()
    snapshot = build(blocks)
    cuts = cuts_for(blocks, stages)
    built = time.perf_counter() - t0
    rss_built = _rss_mb()
    gc_s = [0.0, 0.0]  # time in the cyclic garbage collector during plan, start of the current run

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_s[1] = time.perf_counter()
        else:
            gc_s[0] += time.perf_counter() - gc_s[1]

    gc.collect()
    gc.callbacks.append(on_gc)
    t0, c0 = time.perf_counter(), time.process_time()
    result = (sys.modules["core.plan"]._plan if with_gc else plan)(snapshot, cuts)
    planned, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.callbacks.remove(on_gc)
    assert len(result.stages) == stages
    return {
        "nodes": count_nodes(snapshot),
        "stages": stages,
        "build_s": built,
        "plan_s": planned,
        "plan_cpu_s": cpu,
        "gc_s": gc_s[0],
        "rss_built_mb": rss_built,
        "rss_peak_mb": _rss_mb(),
        "live": sum(len(s.inputs) for s in result.stages[1:]),
    }


def _run_point(nodes: int, stages: int, with_gc: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--one", str(nodes), str(stages)] + (["--with-gc"] if with_gc else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"point ({nodes}, {stages}) failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--stages", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--one", type=int, nargs=2, metavar=("NODES", "STAGES"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, metavar="NODES", help="cProfile one plan of this size (64 stages)")
    parser.add_argument("--with-gc", action="store_true", help="keep the cyclic GC on during planning")
    args = parser.parse_args()
    if args.one:
        nodes, stages = args.one
        print(json.dumps(measure(nodes, stages, with_gc=args.with_gc)))
        return
    if args.profile:
        import cProfile
        import pstats

        blocks = round(args.profile / NODES_PER_BLOCK)
        snapshot, cuts = build(blocks), cuts_for(blocks, 64)
        prof = cProfile.Profile()
        prof.runcall(plan, snapshot, cuts)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return

    head = (
        f"{'nodes':>9} {'stages':>6} {'build s':>7} {'plan s':>7} {'cpu s':>7} {'gc s':>6} "
        f"{'us/node':>7} {'live':>5} {'RSS build':>9} {'RSS peak':>8}"
    )
    print(head)
    print("-" * len(head))
    for nodes in args.sizes:
        for stages in args.stages:
            p = _run_point(nodes, stages, args.with_gc)
            print(
                f"{int(p['nodes']):>9} {int(p['stages']):>6} {p['build_s']:>7.2f} {p['plan_s']:>7.3f} "
                f"{p['plan_cpu_s']:>7.3f} {p['gc_s']:>6.2f} {1e6 * p['plan_cpu_s'] / p['nodes']:>7.2f} "
                f"{int(p['live']):>5} {p['rss_built_mb']:>7.0f}MB {p['rss_peak_mb']:>6.0f}MB",
                flush=True,
            )
    print("plan s / cpu s: core.plan wall-clock and CPU seconds; gc s: of which in the cyclic GC.")
    print("us/node: CPU microseconds of core.plan per snapshot node; flat means linear.")
    print("live: values received by stages 1.. (the liveness lists' total length).")
    print("RSS: peak resident memory after building the snapshot, and after planning too.")
    print(f"load average while running: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
