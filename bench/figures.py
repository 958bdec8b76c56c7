"""The figures (issue 12): what they cost, and how well the predicted step time holds.

    PYTHONPATH=. .venv/bin/python bench/figures.py                     # both parts
    PYTHONPATH=. .venv/bin/python bench/figures.py --blocks 1024 --skip-engine
    PYTHONPATH=. .venv/bin/python bench/figures.py --skip-cost --steps 8

1. Cost: the GPT-like example with `--blocks` blocks, traced with fx (every block a traced
   module: its attention decomposed into views, matmuls and a softmax, so the saved-tensor
   rules do real work), cut into 8 equal stages. `core.plan` against `core.figures.figures`
   on that plan (1F1B, 8 microbatches, Adam), best of `--repeat` runs of CPU time; the goal is
   figures under 10% of plan time. The first figures of a snapshot cost more (they read every
   traced graph once to number the modules' structures) and are printed apart. Also `core.balance(..., max_memory=...)` on the same
   snapshot (the memory of every candidate range priced), for scale.
2. Predicted against measured step time on the engine: `stagecut train`'s workers (gloo, one
   CPU thread per process) train the GPT example cut into 2 and 4 stages (1F1B) for `--steps`
   steps; measured = the median step after the first (slowest rank, barrier included).
   Predicted = `core.figures` with each stage's forward and backward seconds from
   `adapters.fx.measure.module_seconds` on one microbatch (one thread, in this process) and
   the bandwidth and latency of a gloo ping-pong between two processes; then again with each
   stage module timed whole (no per-module hooks), which separates the cost model's error
   from the schedule model's. The ratio predicted / measured is reported; the prediction
   leaves out the optimizer step, the gradient scaling, the tie sync and the engine's own
   per-action overhead, which the measured step includes. With more processes than cores
   (4 stages on a 2-core machine) the measured step also pays for the processes sharing cores.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapters.examples import build  # noqa: E402
from adapters.fx import snapshot  # noqa: E402
from core import costs, plan  # noqa: E402
from core.balance import balance_report  # noqa: E402
from core.figures import figures, stage_seconds  # noqa: E402
from core.fit import Training  # noqa: E402


def best_cpu(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def cost(blocks: int, repeat: int) -> None:
    print(f"== cost of the figures: GPT example, {blocks} blocks, 8 stages")
    start = time.perf_counter()
    example = build("gpt", n_layers=blocks, max_seq=16, seq=8, batch=2)
    snap = snapshot(example.model, *example.args)
    print(f"snapshot (fx, with value info): {time.perf_counter() - start:.1f} s wall")
    per = blocks // 8
    cuts = [f"blocks.{per * k - 1}" for k in range(1, 8)]
    plan_first, _ = best_cpu(lambda: plan(snap, cuts), 1)
    plan_s, planned = best_cpu(lambda: plan(snap, cuts), repeat)
    # The first figures of a snapshot also number its modules' structures (every traced graph
    # read once) and sum each called module's parameters; later ones reuse that (core.saved,
    # core.memory keep it for the last few snapshots, which are immutable).
    fig_first, _ = best_cpu(lambda: figures(planned, snap, schedule="1f1b", microbatches=8, optimizer="adam"), 1)
    fig_s, found = best_cpu(
        lambda: figures(planned, snap, schedule="1f1b", microbatches=8, optimizer="adam"), repeat
    )
    nodes = sum(len(s.graph) for s in planned.stages)
    inner = sum(len(m.graph) for m in snap.modules.values() if m.graph is not None)
    print(f"core.plan:            {plan_s:.3f} s  ({nodes} stage-graph nodes; first call {plan_first:.3f} s)")
    print(f"core.figures.figures: {fig_s:.3f} s  = {fig_s / plan_s:.1%} of plan time (goal < 10%)")
    print(f"  first call on this snapshot: {fig_first:.3f} s ({inner} nodes in its traced graphs read once)")
    print(f"  peaks: {[s.memory.peak for s in found.stages]}")
    free_s, free = best_cpu(lambda: balance_report(snap, 8, cost=costs.params), 1)
    cap = int(max(s.memory.peak or 0 for s in found.stages) * 0.9)
    training = Training("1f1b", 8, "adam")
    mem_s, capped = best_cpu(lambda: balance_report(snap, 8, cost=costs.params, max_memory=cap, training=training), 1)
    print(f"core.balance, 8 stages:                  {free_s:.3f} s")
    print(f"core.balance, 8 stages, max_memory={cap}: {mem_s:.3f} s (peaks {capped.peaks})")


def _ranks_worker(rank: int, world: int, spec: Any) -> Any:
    torch.set_num_threads(1)
    from adapters.pipelining.check import train_pipelined

    return train_pipelined(rank, world, spec)


def _pingpong(rank: int, world: int, nbytes: int, rounds: int) -> float:
    import torch.distributed as dist

    torch.set_num_threads(1)
    buf = torch.zeros(nbytes // 4)
    for _ in range(3):
        (dist.send if rank == 0 else dist.recv)(buf, 1 - rank)
        (dist.recv if rank == 0 else dist.send)(buf, 1 - rank)
    start = time.perf_counter()
    for _ in range(rounds):
        (dist.send if rank == 0 else dist.recv)(buf, 1 - rank)
        (dist.recv if rank == 0 else dist.send)(buf, 1 - rank)
    return 2 * rounds * nbytes / (time.perf_counter() - start)


def engine(steps: int, blocks: int, batch: int, microbatches: int) -> None:
    from adapters.launch import launch
    from adapters.fx.measure import module_seconds
    from adapters.pipelining.check import TrainSpec

    print(f"\n== predicted vs measured step: GPT example, {blocks} blocks, batch {batch}, "
          f"{microbatches} microbatches, 1F1B, gloo, 1 thread per process")
    bandwidth = launch(_pingpong, 2, 1 << 20, 50, timeout_s=300)[0]
    small = launch(_pingpong, 2, 4, 200, timeout_s=300)[0]
    latency = 4 / small
    print(f"gloo ping-pong: bandwidth {bandwidth / 1e9:.2f} GB/s (1 MiB messages), latency {latency * 1e6:.0f} us (4 bytes)")
    options = (("n_layers", blocks), ("batch", batch), ("d_model", 64), ("n_heads", 4), ("max_seq", 16), ("seq", 16))
    for stages in (2, 4):
        per = blocks // stages
        cuts = tuple(f"blocks.{per * k - 1}" for k in range(1, stages))
        spec = TrainSpec("gpt", options, cuts, "1f1b", steps=steps, num_microbatches=microbatches, dtype="float32")
        results = launch(_ranks_worker, stages, spec, timeout_s=1800)
        per_step = [max(r.seconds[i] for r in results) for i in range(steps)]
        measured = statistics.median(per_step[1:])
        # prediction, from one microbatch measured in this process on one thread
        torch.set_num_threads(1)
        mb = dict(options)
        mb["batch"] = batch // microbatches
        example = build("gpt", dtype=torch.float32, seed=spec.seed, **mb)
        snap = snapshot(example.model, *example.args, cuts=list(cuts))
        planned = plan(snap, cuts)
        total = module_seconds(example.model, example.args, example.kwargs, repeats=5)
        forward = module_seconds(example.model, example.args, example.kwargs, repeats=5, backward=False)
        fwd, bwd = stage_seconds(planned, forward, total)
        found = figures(planned, snap, schedule="1f1b", microbatches=microbatches, optimizer="sgd",
                        forward=fwd, backward=bwd, bandwidth=bandwidth, latency=latency)
        assert found.timeline is not None
        predicted = found.timeline.step
        print(f"{stages} stages: measured {measured * 1000:8.2f} ms/step (median of {steps - 1}), "
              f"predicted {predicted * 1000:8.2f} ms, predicted/measured {predicted / measured:.2f}; "
              f"bubble predicted {found.timeline.bubble:.1%}, schedule's own {found.bubble:.1%}")
        # The same simulation with each stage timed whole (no per-module hooks): how much of the
        # gap is the cost model's rather than the schedule model's.
        sfwd, sbwd = stage_times(planned, example.model, example.args, example.kwargs)
        whole = figures(planned, snap, schedule="1f1b", microbatches=microbatches, optimizer="sgd",
                        forward=sfwd, backward=sbwd, bandwidth=bandwidth, latency=latency)
        assert whole.timeline is not None
        print(f"          with stages timed whole: predicted {whole.timeline.step * 1000:8.2f} ms, "
              f"predicted/measured {whole.timeline.step / measured:.2f}")


def stage_times(planned: Any, model: Any, args: Any, kwargs: Any, repeats: int = 7) -> tuple[list[float], list[float]]:
    """Median forward and backward seconds of each stage module on one microbatch, run as the
    engine runs it (received floats need gradients), without hooks."""
    from adapters.engine.inputs import bind_inputs
    from adapters.graph.stages import stage_modules

    modules = stage_modules(planned, model)
    current: Any = list(bind_inputs(planned.stages[0], args, kwargs))
    fwd, bwd = [], []
    for s, module in enumerate(modules):
        if s:
            current = [c.detach().clone().requires_grad_(c.is_floating_point()) if isinstance(c, torch.Tensor) else c
                       for c in current]
        f_times, b_times = [], []
        out: Any = None
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out = module(*current)
            middle = time.perf_counter()
            leaves = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor) and t.requires_grad]
            torch.autograd.backward(leaves, [torch.ones_like(t) for t in leaves])
            end = time.perf_counter()
            f_times.append(middle - start)
            b_times.append(end - middle)
            model.zero_grad(set_to_none=True)
        fwd.append(statistics.median(f_times[1:]))
        bwd.append(statistics.median(b_times[1:]))
        with torch.no_grad():
            out = module(*current)
        current = list(out) if s < len(modules) - 1 else out
    return fwd, bwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--engine-blocks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args()
    if not args.skip_cost:
        cost(args.blocks, args.repeat)
    if not args.skip_engine:
        engine(args.steps, args.engine_blocks, args.batch, args.microbatches)


if __name__ == "__main__":
    main()
