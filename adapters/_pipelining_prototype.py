"""Prototype: driving torch.distributed.pipelining (torch 2.13) with hand-written stages.

This is the executable record behind ``docs/pipelining-notes.md``; the real
adapter (``adapters/pipelining.py``) will build the same objects from generated
per-stage ``fx.GraphModule``s.  What it establishes:

* ``PipelineStage`` in *static* metadata mode (``input_args`` and
  ``output_args`` given for every stage) so that no stage is ever run on
  uninitialised tensors (dynamic inference does that on non-first stages).
* Stage modules take several positional tensors and return a tuple of tensors:
  an int64 tensor (token ids), a float tensor that needs no grad (a mask), a
  0-d float that does need grad, and a skip value that one stage passes on
  unchanged all cross boundaries.
* A weight tied between the first stage (embedding) and the last stage (head)
  lives as one copy per rank; after the schedule's backward the copies' grads
  are summed over a group of exactly the holding ranks, then SGD steps.
* The schedules scale grads by ``1 / n_microbatches`` (``scale_grads=True``)
  and report the unscaled per-microbatch losses, so the single-process
  reference is ``mean(loss(mb) for mb in batch.tensor_split(n))``.  That
  scaling runs once per *stage*, so a Parameter shared by two stages on one
  rank (V placement) needs ``engine_scales_grads=False`` (scale once by hand).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleDualPipeV,
    ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS,
    ScheduleZBVZeroBubble,
)
from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
)
from torch.distributed.pipelining.stage import _PipelineStageBase

__all__ = [
    "ScheduleName",
    "TinyConfig",
    "TinyGPT",
    "TinyStage",
    "RunResult",
    "run_key",
    "stage_ranks",
    "split_tiny_gpt",
    "loss_fn",
    "make_batches",
    "example_stage_args",
    "tied_parameter_ranks",
    "sync_tied_grads",
    "run_reference",
    "run_pipelined",
    "pipelined_worker",
]

ScheduleName = Literal[
    "gpipe",
    "1f1b",
    "interleaved_1f1b",
    "looped_bfs",
    "interleaved_zero_bubble",
    "zbv_zero_bubble",
    "dualpipe_v",
]
_SINGLE_STAGE: dict[str, type[PipelineScheduleSingle]] = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
}
_MULTI_STAGE: dict[str, type[PipelineScheduleMulti]] = {
    "interleaved_1f1b": ScheduleInterleaved1F1B,
    "looped_bfs": ScheduleLoopedBFS,
    "interleaved_zero_bubble": ScheduleInterleavedZeroBubble,
    "zbv_zero_bubble": ScheduleZBVZeroBubble,
    "dualpipe_v": ScheduleDualPipeV,
}
# These place stages in a V (2 ranks, 4 stages: 0,1,1,0), the others loop (0,1,0,1).
_V_STYLE = frozenset({"zbv_zero_bubble", "dualpipe_v"})

Boundary = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TinyConfig:
    vocab: int = 13
    dim: int = 8
    seq: int = 5
    n_blocks: int = 4
    skip_after: int = 1  # the skip value is taken after this block
    seed: int = 0


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.lin(h))


class TinyGPT(nn.Module):
    """Embedding -> blocks with residual -> head tied to the embedding (float64).

    Extra values a cut has to carry: ``z`` (0-d, needs grad, used by the head),
    ``mask`` (float, no grad), ``ids`` (int64, used by the head through a
    lookup), and ``s`` (skip taken after block ``skip_after``, added back
    after the last block).
    """

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        self.emb = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim) for _ in range(cfg.n_blocks))
        self.unigram = nn.Embedding(cfg.vocab, cfg.vocab)  # per-token logit bias
        with torch.no_grad():  # deterministic, independent of the global RNG
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.to(torch.float64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # The unsplit model is the one-stage cut, so reference and stages share code.
        out = TinyStage(self, range(self.cfg.n_blocks), first=True, last=True)(ids)
        assert isinstance(out, torch.Tensor)
        return out


class TinyStage(nn.Module):
    """Blocks ``block_ids`` of a ``TinyGPT``, plus the embedding/head ends.

    Shares submodules (not copies) with ``model``, so on one rank every stage
    built from the same model shares parameters.  Boundary layout:
    ``(h, ids, z, mask)`` plus ``s`` once the skip exists.  Every boundary
    value is a tensor, and ``s``/``ids``/``z``/``mask`` are returned as the very
    objects received when the stage does not touch them.
    """

    def __init__(
        self, model: TinyGPT, block_ids: Sequence[int], *, first: bool, last: bool
    ) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.block_ids = list(block_ids)
        self.first = first
        self.last = last
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in self.block_ids})
        # Tied: the head multiplies by emb.weight.T, so both ends hold ``emb``.
        self.emb: nn.Embedding | None = model.emb if first or last else None
        self.unigram: nn.Embedding | None = model.unigram if last else None

    def forward(self, *args: torch.Tensor) -> torch.Tensor | Boundary:
        s: torch.Tensor | None
        if self.first:
            assert self.emb is not None
            (ids,) = args
            h = self.emb(ids)
            z = (h * h).mean()  # 0-d activation that needs grad downstream
            mask = (ids % 3 != 0).to(h.dtype)  # float activation with no grad
            s = None
        else:
            h, ids, z, mask = args[:4]
            s = args[4] if len(args) > 4 else None
        for i in self.block_ids:
            h = self.blocks[str(i)](h)
            if i == self.cfg.skip_after:
                s = 0.5 * h
        if not self.last:
            return (h, ids, z, mask) if s is None else (h, ids, z, mask, s)
        assert s is not None and self.emb is not None and self.unigram is not None
        h = (h + s) * (1.0 + z)
        logits: torch.Tensor = h @ self.emb.weight.T + self.unigram(ids)
        return logits * mask.unsqueeze(-1)


def split_tiny_gpt(model: TinyGPT, num_stages: int) -> list[TinyStage]:
    """Cut the blocks into ``num_stages`` equal consecutive runs."""
    n = model.cfg.n_blocks
    if n % num_stages:
        raise ValueError(f"{n} blocks do not split into {num_stages} stages")
    per = n // num_stages
    return [
        TinyStage(
            model,
            range(k * per, (k + 1) * per),
            first=k == 0,
            last=k == num_stages - 1,
        )
        for k in range(num_stages)
    ]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def make_batches(
    cfg: TinyConfig, steps: int, batch: int, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, cfg.vocab, (batch, cfg.seq), generator=gen),
            torch.randint(0, cfg.vocab, (batch, cfg.seq), generator=gen),
        )
        for _ in range(steps)
    ]


def example_stage_args(
    stages: Sequence[nn.Module], microbatch: Boundary
) -> list[tuple[Boundary, Boundary]]:
    """Per stage ``(input_args, output_args)`` for static ``PipelineStage`` metadata.

    Runs the stages once, locally, on one real microbatch (each rank holds the
    whole model here; the fx adapter reads the same facts from node metadata).
    Floating tensors are marked ``requires_grad=True``: the consumer's input and
    the producer's output flags must agree, and a False on a 0-d output that
    does need grad makes the engine backprop an implicit 1.0 (silently wrong).
    Marking a float that needs no grad True only costs a zero-gradient send.
    """

    def mark(ts: Boundary) -> Boundary:
        return tuple(
            t.detach().clone().requires_grad_(t.is_floating_point()) for t in ts
        )

    out: list[tuple[Boundary, Boundary]] = []
    args = microbatch
    with torch.no_grad():
        for stage in stages:
            res = stage(*args)
            outs = res if isinstance(res, tuple) else (res,)
            out.append((mark(args), mark(outs)))
            args = outs
    return out


def tied_parameter_ranks(
    model: nn.Module, stages: Sequence[nn.Module], stage_to_rank: Sequence[int]
) -> dict[str, list[int]]:
    """Parameters that stages on more than one rank use -> the ranks holding them."""
    holders: dict[int, set[int]] = {}
    for stage, rank in zip(stages, stage_to_rank, strict=True):
        for p in stage.parameters():
            holders.setdefault(id(p), set()).add(rank)
    return {
        name: sorted(holders[id(p)])
        for name, p in model.named_parameters()
        if len(holders.get(id(p), ())) > 1
    }


def sync_tied_grads(
    params: Sequence[nn.Parameter], group: dist.ProcessGroup | None
) -> None:
    """Sum the grads of one tied weight's per-rank copies (call on every holder)."""
    for p in params:
        if p.grad is None:  # a holder whose microbatches did not touch it
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)


def _unique_params(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


@dataclass
class RunResult:
    losses: list[float] = field(default_factory=list)  # mean microbatch loss per step
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def run_reference(
    cfg: TinyConfig, steps: int, batch: int, n_microbatches: int, lr: float
) -> RunResult:
    """Unsplit model, same microbatch split and loss scaling as the schedules."""
    model = TinyGPT(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    result = RunResult()
    for ids, target in make_batches(cfg, steps, batch):
        opt.zero_grad(set_to_none=True)
        losses = [
            loss_fn(model(i), t)
            for i, t in zip(
                ids.tensor_split(n_microbatches),
                target.tensor_split(n_microbatches),
                strict=True,
            )
        ]
        total = torch.stack(losses).mean()  # == sum(mb grads) / n_microbatches
        torch.autograd.backward(total)
        opt.step()
        result.losses.append(float(total.detach()))
    result.params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return result


def stage_ranks(schedule: ScheduleName, world_size: int, num_stages: int) -> list[int]:
    """The rank of each stage, exactly as the schedule itself places them."""
    style = "v" if schedule in _V_STYLE else "loop"
    mapping = generate_stage_to_rank_mapping(world_size, num_stages, style=style)
    return [mapping[s] for s in range(num_stages)]


def run_pipelined(
    rank: int,
    world_size: int,
    schedule: ScheduleName,
    num_stages: int,
    *,
    engine_scales_grads: bool = True,
    cfg: TinyConfig = TinyConfig(),
    steps: int = 3,
    batch: int = 8,
    n_microbatches: int = 4,
    lr: float = 0.1,
) -> RunResult:
    """One rank's share of a pipelined training run (inside a process group).

    ``engine_scales_grads=False`` passes ``scale_grads=False`` and divides each
    local parameter's grad by ``n_microbatches`` once after ``step``; that is
    required when one Parameter is used by two stages on the same rank (the
    engine would divide it once per stage).

    Returns the per-step mean loss (only on the rank holding the last stage)
    and the final values of the parameters this rank's stages use.
    """
    device = torch.device("cpu")
    model = TinyGPT(cfg)  # same seed on every rank: identical copies
    all_stages = split_tiny_gpt(model, num_stages)
    stage_to_rank = stage_ranks(schedule, world_size, num_stages)
    my_ids = [s for s in range(num_stages) if stage_to_rank[s] == rank]
    batches = make_batches(cfg, steps, batch)

    first_mb = (batches[0][0].tensor_split(n_microbatches)[0],)
    examples = example_stage_args(all_stages, first_mb)
    stages: list[_PipelineStageBase] = [
        PipelineStage(
            all_stages[s],
            s,
            num_stages,
            device,
            input_args=examples[s][0],
            output_args=examples[s][1],
        )
        for s in my_ids  # ascending stage order, as multi-stage schedules expect
    ]

    # new_group is collective over the default group: every rank creates every
    # group, in the same order, member or not.
    tied = tied_parameter_ranks(model, all_stages, stage_to_rank)
    tied_groups = {
        name: dist.new_group(ranks=ranks) for name, ranks in sorted(tied.items())
    }
    named = dict(model.named_parameters())
    my_params = _unique_params([all_stages[s] for s in my_ids])
    my_param_ids = {id(p) for p in my_params}

    sched: PipelineScheduleSingle | PipelineScheduleMulti
    if schedule in _SINGLE_STAGE:
        if num_stages != world_size:
            raise ValueError(f"{schedule} runs exactly one stage per rank")
        sched = _SINGLE_STAGE[schedule](
            stages[0],
            n_microbatches=n_microbatches,
            loss_fn=loss_fn,
            scale_grads=engine_scales_grads,
        )
    else:
        sched = _MULTI_STAGE[schedule](
            stages,
            n_microbatches=n_microbatches,
            loss_fn=loss_fn,
            scale_grads=engine_scales_grads,
        )

    opt = torch.optim.SGD(my_params, lr=lr)
    holds_first = 0 in my_ids
    holds_last = num_stages - 1 in my_ids
    result = RunResult()
    for ids, target in batches:
        # Required: the engine's scaling divides whatever .grad already holds.
        opt.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        args = (ids,) if holds_first else ()
        sched.step(
            *args,
            target=target if holds_last else None,
            losses=losses,
            return_outputs=False,  # the merged logits are not needed
        )
        if not engine_scales_grads:
            for p in my_params:
                if p.grad is not None:
                    p.grad.div_(n_microbatches)
        for name, group in tied_groups.items():
            if rank in tied[name]:
                sync_tied_grads([named[name]], group)
        opt.step()
        if holds_last:
            result.losses.append(float(torch.stack(losses).detach().mean()))
    result.params = {
        n: p.detach().clone() for n, p in named.items() if id(p) in my_param_ids
    }
    return result


def run_key(schedule: ScheduleName, num_stages: int, engine_scales_grads: bool) -> str:
    return f"{schedule}/{num_stages}/{'engine' if engine_scales_grads else 'manual'}"


def pipelined_worker(
    rank: int,
    world_size: int,
    runs: Sequence[tuple[ScheduleName, int, bool]],
) -> dict[str, RunResult]:
    """``launch`` entry point: each ``(schedule, num_stages, engine_scales_grads)``
    run in turn, keyed by ``run_key``."""
    return {
        run_key(name, n, engine): run_pipelined(
            rank, world_size, name, n, engine_scales_grads=engine
        )
        for name, n, engine in runs
    }
