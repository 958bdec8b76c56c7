"""Per-step time of stagecut's generated stages vs hand-written stage modules of the same split,
on the same schedule (torch.distributed.pipelining, gloo, 2 CPU processes), side by side.
Both sum the tied embedding/head gradient across the two ranks, as correct training needs.

Run on demand:  PYTHONPATH=. .venv/bin/python bench/engine_overhead.py [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

from adapters.examples import build
from adapters.fx import snapshot
from adapters.launch import launch
from adapters.pipelining import Pipeline
from adapters.pipelining.check import loss_fn
from core import plan

OPTIONS = dict(n_layers=8, d_model=128, n_heads=4, batch=16, seq=64, max_seq=64, vocab_size=512)
MICROBATCHES = 4
CUT = 3  # two stages: blocks 0-3 | blocks 4-7


class HandFirst(nn.Module):
    def __init__(self, gpt: Any) -> None:
        super().__init__()
        self.tok_emb, self.pos_emb = gpt.tok_emb, gpt.pos_emb
        self.blocks = nn.ModuleList(gpt.blocks[: CUT + 1])

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for blk in self.blocks:
            x = blk(x)
        return x


class HandLast(nn.Module):
    def __init__(self, gpt: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(gpt.blocks[CUT + 1 :])
        self.ln_f, self.lm_head = gpt.ln_f, gpt.lm_head

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        out: Tensor = self.lm_head(self.ln_f(x))
        return out


def _data(example: Any, steps: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    idx = example.args[0]
    return (
        torch.randint(0, OPTIONS["vocab_size"], idx.shape, generator=gen),
        torch.randint(0, OPTIONS["vocab_size"], idx.shape, generator=gen),
    )


def _timed(step: Any, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        step()
        dist.barrier()
        times.append(time.perf_counter() - start)
    return times[2:]  # warm-up


def worker(rank: int, world_size: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    example = build("gpt", **OPTIONS)
    model = example.model
    idx, target = _data(example, steps)
    cut = f"blocks.{CUT}"
    pipe = Pipeline(
        plan(snapshot(model, idx, cuts=[cut]), [cut]), model, kind="gpipe", loss_fn=loss_fn,
        num_microbatches=MICROBATCHES, example_args=(idx,),
    )
    hand_module = HandFirst(model) if rank == 0 else HandLast(model)
    mb = idx.tensor_split(MICROBATCHES)[0]
    with torch.no_grad():
        h = HandFirst(model)(mb)
    example_in = (mb,) if rank == 0 else (h.detach().requires_grad_(True),)
    example_out = (h.detach().requires_grad_(True),) if rank == 0 else (HandLast(model)(h).detach().requires_grad_(True),)
    hand_stage = PipelineStage(hand_module, rank, 2, torch.device("cpu"), input_args=example_in, output_args=example_out)
    hand = ScheduleGPipe(hand_stage, MICROBATCHES, loss_fn=loss_fn)

    def ours() -> None:
        model.zero_grad(set_to_none=True)
        pipe.step(idx, target=target)

    tied = model.tok_emb.weight  # also lm_head.weight: its copies on both ranks must be summed

    def handwritten() -> None:
        model.zero_grad(set_to_none=True)
        if rank == 0:
            hand.step(idx)
        else:
            hand.step(target=target, losses=[])
        # What a hand-written pipeline must do too to train a tied embedding/head correctly.
        dist.all_reduce(tied.grad if tied.grad is not None else torch.zeros_like(tied))

    # Interleave the two so machine load affects both alike.
    result: dict[str, list[float]] = {"stagecut": [], "hand-written": []}
    for _ in range(3):
        result["stagecut"] += _timed(ours, steps // 3 + 2)
        result["hand-written"] += _timed(handwritten, steps // 3 + 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    results = launch(worker, 2, args.steps, timeout_s=600)
    times = results[0]
    ours, hand = statistics.median(times["stagecut"]), statistics.median(times["hand-written"])
    print(f"gpt {OPTIONS}, 2 stages on 2 ranks, GPipe, {MICROBATCHES} microbatches")
    print(f"{'stages':<14} {'median step (ms)':>17} {'samples':>8}")
    print(f"{'stagecut':<14} {ours * 1e3:>17.1f} {len(times['stagecut']):>8}")
    print(f"{'hand-written':<14} {hand * 1e3:>17.1f} {len(times['hand-written']):>8}")
    print(f"ratio stagecut / hand-written: {ours / hand:.3f}")


if __name__ == "__main__":
    main()
