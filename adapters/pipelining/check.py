"""Train a built-in example pipelined and unsplit on the same data, to compare them.

`train_pipelined` runs on every rank (a `launch` worker); `train_reference` runs the unsplit
model in one process with the same microbatch split and loss scaling (the mean over
microbatches). Used by the engine tests and by `stagecut train`.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from adapters import examples
from adapters.fx import snapshot
from adapters.pipelining.schedule import Pipeline, ScheduleKind
from core import Plan
from core import plan as make_plan


@dataclass(frozen=True)
class TrainSpec:
    model: str = "gpt"
    options: tuple[tuple[str, Any], ...] = ()
    cuts: tuple[str, ...] = ()
    kind: ScheduleKind = "gpipe"
    steps: int = 3
    num_microbatches: int = 4
    lr: float = 0.1
    seed: int = 0
    dtype: str = "float64"
    replicate: tuple[str, ...] = ()  # model inputs that are not batched
    engine: str = "torch"  # "torch" (torch.distributed.pipelining, `kind`) or "deepspeed" (its 1F1B)
    checkpointing: bool = False  # activation checkpointing (the deepspeed engine)
    data_parallel: int = 1  # replicas of the pipeline (the deepspeed engine; each trains on the same data)
    tracer: str = "auto"  # the frontend (`adapters.fx.snapshot(tracer=...)`)
    plan_json: str = ""  # a plan read from a file, used instead of tracing and `cuts`
    trusted_modules: tuple[str, ...] = ()  # modules whose functions `plan_json` may call

    def plan(self, example: examples.Example) -> Plan:
        """The plan every rank trains: `plan_json` read back (checked against the allow-list
        and the model when the stages are built), or the example traced and cut at `cuts`."""
        if self.plan_json:
            return Plan.from_json(self.plan_json)
        snap = snapshot(example.model, *example.args, cuts=list(self.cuts), tracer=self.tracer, **example.kwargs)  # type: ignore[arg-type]
        return make_plan(snap, self.cuts)

    def build(self) -> examples.Example:
        """The model: a built-in example, `hf:<name>` (adapters.hf_models), or
        `package.module:factory` (called with the options, after seeding torch)."""
        dtype = getattr(torch, self.dtype)
        if self.model.startswith("hf:"):
            from adapters import hf_models

            return hf_models.build(self.model[3:], dtype=dtype, seed=self.seed, **dict(self.options))
        if ":" in self.model:
            return _from_factory(self.model, self.seed, dict(self.options))
        return examples.build(self.model, dtype=dtype, seed=self.seed, **dict(self.options))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean microbatch loss per step
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # per step
    tokens: int = 0  # per step


def _from_factory(spec: str, seed: int, options: dict[str, Any]) -> examples.Example:
    """`package.module:factory` -> an Example; every rank calls it after the same seeding."""
    module_name, _, attribute = spec.rpartition(":")
    factory: Any
    if module_name.endswith(".py") or "/" in module_name:
        loader = importlib.util.spec_from_file_location(f"stagecut_factory_{abs(hash(module_name))}", module_name)
        if loader is None or loader.loader is None:
            raise ImportError(f"cannot load {module_name!r}")
        factory = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(factory)
    else:
        factory = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    torch.manual_seed(seed)
    built = factory(**options)
    if isinstance(built, tuple):
        model, args, kwargs = (*built, {}) if len(built) == 2 else built
        return examples.Example(spec, model, tuple(args), dict(kwargs), spec)
    return examples.Example(spec, built.model, tuple(built.args), dict(getattr(built, "kwargs", {})), spec)


def tokens_per_step(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The size of the first input tensor (token ids, for language models; args before kwargs)."""
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    return 0 if first is None else first.numel()


def loss_fn(output: Any, target: torch.Tensor) -> torch.Tensor:
    """The model's own loss when it computed one (a transformers model given `labels`), else
    cross-entropy on logits for token targets, or the mean squared error for float targets."""
    if isinstance(output, dict) and output.get("loss") is not None:
        loss: torch.Tensor = output["loss"]
        return loss
    logits = output["logits"] if isinstance(output, dict) else output
    if target.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return F.mse_loss(logits, target)


def batches(spec: TrainSpec, example: examples.Example) -> list[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]]:
    """`steps` batches shaped like the example's inputs; targets shaped like its output."""
    gen = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        out = example.model(*example.args, **example.kwargs)
    logits = out["logits"] if isinstance(out, dict) else out

    def like(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            return torch.randint(0, int(value.max()) + 1, value.shape, generator=gen, dtype=value.dtype)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return torch.randn(value.shape, generator=gen, dtype=value.dtype)
        return value

    def target() -> torch.Tensor:
        if logits.dim() == 3:
            return torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=gen)
        return torch.randn(logits.shape, generator=gen, dtype=logits.dtype)

    return [
        (tuple(like(a) for a in example.args), {k: like(v) for k, v in example.kwargs.items()}, target())
        for _ in range(spec.steps)
    ]


def _split(value: Any, n: int, whole: bool = False) -> list[Any]:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and not whole:
        return list(value.tensor_split(n))
    return [value] * n


def train_reference(spec: TrainSpec) -> TrainResult:
    example = spec.build()
    model = example.model
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr)
    result = TrainResult()
    n = spec.num_microbatches
    for args, kwargs, target in batches(spec, example):
        opt.zero_grad(set_to_none=True)
        split_args = [_split(a, n) for a in args]
        split_kwargs = {k: _split(v, n, k in spec.replicate) for k, v in kwargs.items()}
        losses = [
            loss_fn(model(*(a[i] for a in split_args), **{k: v[i] for k, v in split_kwargs.items()}), t)
            for i, t in enumerate(target.tensor_split(n))
        ]
        total = torch.stack(losses).mean()
        torch.autograd.backward(total)
        opt.step()
        result.losses.append(float(total.detach()))
    result.params = {name: p.detach().clone() for name, p in model.named_parameters(remove_duplicate=False)}
    return result


def train_pipelined(rank: int, world_size: int, spec: TrainSpec, report: bool = False) -> TrainResult:
    """A `launch` worker: every rank builds the same model and plan, then trains its stages.
    With `report`, the rank holding the last stage prints a progress line per step."""
    if spec.engine == "deepspeed":
        from adapters.deepspeed.check import train_deepspeed

        return train_deepspeed(rank, world_size, spec, report)
    example = spec.build()
    model = example.model
    plan = spec.plan(example)
    data = batches(spec, example)
    pipe = Pipeline(
        plan, model, kind=spec.kind, loss_fn=loss_fn, num_microbatches=spec.num_microbatches,
        example_args=data[0][0], example_kwargs=data[0][1], replicate=spec.replicate,
        trusted_modules=spec.trusted_modules,
    )
    opt = torch.optim.SGD(pipe.parameters, lr=spec.lr)

    def step(args: tuple[Any, ...], kwargs: dict[str, Any], target: Any) -> list[torch.Tensor]:
        opt.zero_grad(set_to_none=True)
        losses = pipe.step(*args, target=target, **kwargs)
        opt.step()
        return losses

    result = run_steps(spec, data, step, pipe.is_last, report)
    params = dict(model.named_parameters(remove_duplicate=False))  # stage.params lists buffers too
    names = {name for s in pipe.local for name in plan.stages[s].params if name in params}
    result.params = {name: params[name].detach().clone() for name in sorted(names)}
    return result


def run_steps(
    spec: TrainSpec,
    data: list[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]],
    step: Callable[[tuple[Any, ...], dict[str, Any], Any], list[torch.Tensor]],
    is_last: bool,
    report: bool,
) -> TrainResult:
    """The training loop every engine's worker runs: one `step` (forward, backward, optimizer
    step) per batch, timed across ranks, with the mean microbatch loss on the last stage's rank."""
    result = TrainResult(tokens=tokens_per_step(data[0][0], data[0][1]))
    for index, (args, kwargs, target) in enumerate(data):
        start = time.perf_counter()
        losses = step(args, kwargs, target)
        dist.barrier()
        result.seconds.append(time.perf_counter() - start)
        if is_last:
            result.losses.append(float(torch.stack(losses).mean()))
            if report:
                _report(index, spec.steps, result.losses[-1], result.tokens / result.seconds[-1])
    return result


def _report(step: int, steps: int, loss: float, tokens_per_s: float) -> None:
    done = round(20 * (step + 1) / steps)
    bar = "#" * done + "-" * (20 - done)
    print(f"[{bar}] step {step + 1}/{steps}  loss {loss:.6f}  {tokens_per_s:,.0f} tokens/s", flush=True)


def train_many(rank: int, world_size: int, specs: list[TrainSpec]) -> list[TrainResult]:
    """Several runs in one launch: spawning ranks and importing torch costs more than training."""
    return [train_pipelined(rank, world_size, spec) for spec in specs]
