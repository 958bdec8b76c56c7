"""Per-step time of stagecut's generated stages vs hand-written stage modules of the same split,
on the same engine (gloo, 2 CPU processes), side by side, interleaved in one run:

- torch: `adapters.pipelining.Pipeline` vs hand-written `PipelineStage`s, GPipe;
- deepspeed: `adapters.deepspeed.DeepSpeedPipeline` vs a hand-written `PipelineModule` of the
  same two stages, DeepSpeed's 1F1B, the same config (`ds_config`), SGD step included.

Both sides sum the tied embedding/head gradient across the two ranks, as correct training needs.

Run on demand:  PYTHONPATH=. .venv/bin/python bench/engine_overhead.py [--steps 30] [--engine torch|deepspeed|all]
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


def deepspeed_worker(rank: int, world_size: int, steps: int) -> dict[str, list[float]]:
    from adapters.deepspeed import DeepSpeedPipeline, ds_config, init_comm  # first: it picks the accelerator

    import deepspeed
    from deepspeed.pipe import PipelineModule

    init_comm()
    ours_model = build("gpt", **OPTIONS).model  # the same seed: equal weights
    hand_model = build("gpt", **OPTIONS).model
    idx, target = _data(build("gpt", **OPTIONS), steps)
    cut = f"blocks.{CUT}"

    def sgd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    pipe = DeepSpeedPipeline(
        plan(snapshot(ours_model, idx, cuts=[cut]), [cut]), ours_model, loss_fn=loss_fn, optimizer=sgd,
        num_microbatches=MICROBATCHES, example_args=(idx,),
    )

    class HandPipe(PipelineModule):
        """What a hand-written pipeline on upstream DeepSpeed needs for the tied embedding/head:
        the engine sums the gradients of what `get_tied_weights_and_groups` returns."""

        def __init__(self) -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                super().__init__(layers=[HandFirst(hand_model), HandLast(hand_model)], num_stages=2,
                                 loss_fn=loss_fn, partition_method="uniform")
            self.tie_group = dist.new_group(ranks=[0, 1])

        def get_tied_weights_and_groups(self) -> list[tuple[Tensor, Any]]:
            return [(hand_model.tok_emb.weight, self.tie_group)]

    module = HandPipe()
    config = ds_config(micro_batch_size=idx.shape[0] // MICROBATCHES, num_microbatches=MICROBATCHES)
    hand, _, _, _ = deepspeed.initialize(model=module, optimizer=sgd(module.parameters()), config=config)
    setattr(hand, "pipeline_enable_backward_allreduce", False)  # as DeepSpeedPipeline: one replica
    microbatches = list(zip(idx.tensor_split(MICROBATCHES), target.tensor_split(MICROBATCHES)))

    def ours() -> None:
        pipe.step(idx, target=target)

    def handwritten() -> None:
        hand.train_batch(data_iter=iter(microbatches))

    # Alternate step by step, so that the load of a shared machine falls on both alike.
    result: dict[str, list[float]] = {"stagecut": [], "hand-written": []}
    for step in range(steps + 2):
        for name, fn in (("stagecut", ours), ("hand-written", handwritten)):
            dist.barrier()
            start = time.perf_counter()
            fn()
            dist.barrier()
            if step >= 2:  # warm-up
                result[name].append(time.perf_counter() - start)
    return result


def _table(title: str, times: dict[str, list[float]]) -> None:
    ours, hand = statistics.median(times["stagecut"]), statistics.median(times["hand-written"])
    print(title)
    print(f"{'stages':<14} {'median step (ms)':>17} {'samples':>8}")
    print(f"{'stagecut':<14} {ours * 1e3:>17.1f} {len(times['stagecut']):>8}")
    print(f"{'hand-written':<14} {hand * 1e3:>17.1f} {len(times['hand-written']):>8}")
    print(f"ratio stagecut / hand-written: {ours / hand:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--engine", choices=["torch", "deepspeed", "all"], default="all")
    args = parser.parse_args()
    if args.engine in ("torch", "all"):
        times = launch(worker, 2, args.steps, timeout_s=600)[0]
        _table(f"torch.distributed.pipelining: gpt {OPTIONS}, 2 stages on 2 ranks, GPipe, {MICROBATCHES} microbatches", times)
    if args.engine in ("deepspeed", "all"):
        times = launch(deepspeed_worker, 2, args.steps, timeout_s=600)[0]
        _table(f"DeepSpeed: gpt {OPTIONS}, 2 stages on 2 ranks, 1F1B, {MICROBATCHES} microbatches, SGD step included", times)


if __name__ == "__main__":
    main()
