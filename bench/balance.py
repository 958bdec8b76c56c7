"""Benchmark of `core.balance`: speed of the exact partition, and its quality against peers.

    PYTHONPATH=. .venv/bin/python bench/balance.py [--quick]

1. The chain function `partition_chain`: 10k and 100k candidate boundaries into 64 stages
   (random float costs; integer costs; with communication costs).
2. Snapshot level: `balance(snapshot, 64, cost=params)` on hand-built GPT-like snapshots with
   10k and 100k blocks (candidate detection, placing them in the root graph, pricing every
   node, partition), and the same with `comm_weight` (adds stage assignment and liveness): the
   first call on a fresh snapshot (with the snapshot check it pays once) and the best of 3
   after it (CPU seconds).
3. Max-stage cost / mean stage cost for ours and for the peers re-implemented in
   tests/test_balance.py: torch.distributed.pipelining's `split_into_equal_size`, DeepSpeed's
   bisection `partition_balanced` (<= 2023) and its current min-spread DP.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import costs  # noqa: E402
from core.balance import balance_report  # noqa: E402
from core.builder import GraphBuilder, module  # noqa: E402
from core.chain import chain  # noqa: E402
from core.graph import ValueInfo  # noqa: E402
from core.partition import partition_chain  # noqa: E402
from core.snapshot import Param, Snapshot  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best CPU seconds of `repeat` runs (process time: steadier than wall time on a shared box;
    the code is single-threaded, so on an idle machine the two agree)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def gpt_snapshot(blocks: int) -> Snapshot:
    """idx -> tok_emb -> blocks.0..N-1 -> ln_f -> lm_head, with shapes and bytes; every block has
    a slightly different parameter count so the partition is not trivial."""
    rng = random.Random(blocks)
    act = ValueInfo("tensor", (8, 1024, 1024), "bfloat16", 8 * 1024 * 1024 * 2)
    g = GraphBuilder()
    h = g.placeholder("idx", info=ValueInfo("tensor", (8, 1024), "int64", 8 * 1024 * 8))
    h = g.call_module("tok_emb", h, info=act)
    for i in range(blocks):
        h = g.call_module(f"blocks.{i}", h, info=act)
    h = g.call_module("ln_f", h, info=act)
    h = g.call_module("lm_head", h, info=ValueInfo("tensor", (8, 1024, 50304), "bfloat16", 8 * 1024 * 50304 * 2))
    per_block = 12 * 1024 * 1024
    children = {
        "tok_emb": module("tok_emb", params={"weight": Param("emb", 50304 * 1024, 2 * 50304 * 1024)}, type_name="Embedding"),
        "blocks": module(
            "blocks",
            children={
                str(i): module(
                    f"blocks.{i}",
                    params={"w": Param(f"b{i}", n, 2 * n)},
                    type_name="Block",
                )
                for i in range(blocks)
                for n in [per_block + rng.randint(-per_block // 10, per_block // 10)]
            },
            type_name="ModuleList",
        ),
        "ln_f": module("ln_f", params={"weight": Param("lnf", 1024, 2048)}, type_name="LayerNorm"),
        "lm_head": module("lm_head", params={"weight": Param("head", 50304 * 1024, 2 * 50304 * 1024)}, type_name="Linear"),
    }
    return Snapshot(module("", g.output(h), children))


def bench_chain(sizes: Sequence[int], stages: int) -> None:
    print(f"\n## partition_chain: n candidates -> {stages} stages (CPU s, best of 3 up to 10k)\n")
    print(f"{'n':>8}  {'costs':<25}  {'seconds':>8}  {'max/mean':>9}")
    rng = random.Random(0)
    for n in sizes:
        floats = [rng.random() for _ in range(n + 1)]
        ints = [rng.randint(1, 1000) for _ in range(n + 1)]
        crossing = [rng.randint(0, 10**6) for _ in range(n)]
        # comm_weight 1e-6: links of 0..1 per boundary, about 1% of a stage; 1e-4: ~2x a stage.
        rows: list[tuple[str, Callable[[], Any]]] = [
            ("float (uniform 0..1)", lambda: partition_chain(floats, stages)),
            ("int (1..1000)", lambda: partition_chain(ints, stages)),
            ("float, comm_weight 1e-6", lambda: partition_chain(floats, stages, boundary_bytes=crossing, comm_weight=1e-6)),
            ("float, comm_weight 1e-4", lambda: partition_chain(floats, stages, boundary_bytes=crossing, comm_weight=1e-4)),
        ]
        for label, fn in rows:
            seconds, split = timed(fn, repeat=3 if n <= 10_000 else 1)
            mean = sum(split.stage_costs) / stages
            print(f"{n:>8}  {label:<25}  {seconds:>8.3f}  {split.bottleneck / mean:>9.5f}")


def bench_snapshot(sizes: Sequence[int], stages: int) -> None:
    print(f"\n## balance(snapshot, {stages}, cost=params) on a GPT-like snapshot with n blocks (CPU s)\n")
    print("first = the first call on a fresh snapshot, which includes check_snapshot (paid once per")
    print("snapshot, by its first balance or plan; a snapshot read from JSON is checked when read);")
    print("best = best of 3 after it; chain = candidates, their places in the root graph, every node")
    print("priced (and with comm_weight the bytes crossing each candidate boundary), best of 3.\n")
    print(f"{'n':>8}  {'comm_weight':>11}  {'first':>6}  {'best':>6}  {'chain':>6}  {'max/mean':>9}  {'nodes':>7}")
    for n in sizes:
        for weight in (0.0, 1e-9):
            snap = gpt_snapshot(n)  # fresh: not checked yet
            graph = snap.root.graph
            assert graph is not None
            first_s, report = timed(lambda: balance_report(snap, stages, cost=costs.params, comm_weight=weight), repeat=1)
            best_s, _ = timed(lambda: balance_report(snap, stages, cost=costs.params, comm_weight=weight), repeat=3)
            chain_s, _ = timed(lambda: chain(snap, costs.params, with_bytes=weight > 0), repeat=3)
            print(f"{n:>8}  {weight:>11g}  {first_s:>6.3f}  {best_s:>6.3f}  {chain_s:>6.3f}  {report.imbalance:>9.5f}  {len(graph):>7}")


def quality_table() -> None:
    from tests.test_balance import (
        deepspeed_partition_balanced_bisect,
        deepspeed_partition_balanced_spread,
        max_stage,
        torch_split_into_equal_size,
    )

    def ratio(weights: Sequence[float], bounds: Sequence[int], stages: int) -> float:
        mean = sum(Fraction(w) for w in weights) / stages
        return float(max_stage(weights, bounds) / mean)

    gpt2 = [38_597_376 + 786_432] + [7_087_872] * 12 + [38_597_376 + 1_536]  # wte+wpe, blocks, ln_f+head
    llama = [131_072_000] + [218_112_000] * 32 + [131_072_000 + 4_096]  # 7B-like, untied head
    rng = random.Random(7)
    measured = [rng.uniform(40e-6, 60e-6) for _ in range(24)]  # per-layer seconds
    measured = [3 * measured[0]] + measured + [4 * measured[-1]]
    resnet = [118_013_952] + [231_211_008] * 3 + [102_760_448] * 4 + [102_760_448] * 6 + [102_760_448] * 3 + [2_049_000]
    chains: list[tuple[str, Sequence[float], int]] = [
        ("GPT-like [5, 1 x 7, 5]", [5] + [1] * 7 + [5], 3),
        ("GPT-like [5, 1 x 13, 5]", [5] + [1] * 13 + [5], 4),
        ("GPT-2 small params", gpt2, 4),
        ("GPT-2 small params", gpt2, 8),
        ("LLaMA-7B-like params", llama, 8),
        ("measured seconds (us)", measured, 4),
        ("ResNet-50-like flops", resnet, 4),
        ("[3, 1, 1] (heavy first)", [3, 1, 1], 2),
    ]
    print("\n## max-stage cost / mean stage cost (1.0 is perfect; lower is better)\n")
    print(f"{'chain':<26} {'S':>2}  {'ours':>7}  {'torch equal_size':>16}  {'DS bisect':>9}  {'DS spread':>9}")
    for label, weights, stages in chains:
        n = len(weights)
        split = partition_chain(weights, stages)
        mine = ratio(weights, [0, *(c + 1 for c in split.cuts), n], stages)
        torch_ratio = ratio(weights, [0, *torch_split_into_equal_size(weights, stages), n], stages)
        ds_bisect = ratio(weights, deepspeed_partition_balanced_bisect(weights, stages), stages)
        ds_spread = ratio(weights, deepspeed_partition_balanced_spread(weights, stages), stages)
        print(f"{label:<26} {stages:>2}  {mine:>7.4f}  {torch_ratio:>16.4f}  {ds_bisect:>9.4f}  {ds_spread:>9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k only")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    bench_chain(sizes, 64)
    bench_snapshot(sizes, 64)
    quality_table()


if __name__ == "__main__":
    main()
