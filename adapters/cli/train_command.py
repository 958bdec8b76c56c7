"""`stagecut train`: train a built-in example on the pipeline engine in local processes, then
check the result against a single-process run of the unsplit model."""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any, get_args

from adapters.cli.default_cuts import equal_blocks
from adapters.cli.errors import UsageError

DESCRIPTION = """\
Train a model (a built-in example or a factory's) for a few steps on torch.distributed.pipelining (--engine
torch) or DeepSpeed's pipeline engine (--engine deepspeed, one stage per process, DeepSpeed's
1F1B), with its stages in local processes (gloo on CPU), printing loss and tokens/s per step;
then train the unsplit model in one process on the same data and say whether both agree
(float64).
"""
ENGINES = ("torch", "deepspeed")


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    # Nothing here imports torch: `stagecut plan --snapshot` must work without it.
    parser = commands.add_parser("train", help="train a built-in example on the pipeline engine", description=DESCRIPTION)
    parser.add_argument(
        "--model", default="gpt",
        help="a built-in example (gpt, t5, structured, scalars), package.module:factory or path/to/file.py:factory "
        "(e.g. adapters.hf_models:make -o name=llama); every process calls the factory after the same seeding "
        "(default: gpt)",
    )
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument for the model's factory (repeatable); --batch applies to built-in examples")
    parser.add_argument("--tracer", choices=("auto", "fx", "export"), default="auto",
                        help="how to trace the model: fx, torch.export, or auto (default)")
    parser.add_argument("--stages", type=int, default=2, metavar="N", help="number of stages (default: 2)")
    parser.add_argument("--cut", action="append", default=[], metavar="PATH", help="explicit cuts instead of --stages")
    parser.add_argument("--schedule", default="1f1b", help="gpipe, 1f1b, interleaved, looped_bfs, zero_bubble (default: 1f1b)")
    parser.add_argument("--processes", type=int, metavar="P", help="ranks (default: N for gpipe/1f1b, N/2 otherwise)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps (default: 5)")
    parser.add_argument("--microbatches", type=int, default=4, help="microbatches per step (default: 4)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1)")
    parser.add_argument("--no-check", action="store_true", help="skip the single-process comparison")
    parser.add_argument("--engine", default="torch", help="torch (torch.distributed.pipelining) or deepspeed (default: torch)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (--engine deepspeed)")
    parser.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from adapters.fx import snapshot
    from adapters.launch import launch
    from adapters.pipelining.check import TrainSpec, train_pipelined, train_reference
    from adapters.pipelining.schedule import ScheduleKind, SINGLE

    from adapters.examples import EXAMPLES

    factory = ":" in ns.model
    if not factory and ns.model not in EXAMPLES:
        raise UsageError(
            f"unknown example {ns.model!r}; choose one of {', '.join(sorted(EXAMPLES))}, or give "
            "package.module:factory or path/to/file.py:factory"
        )
    if ns.option and not factory:
        raise UsageError("-o options go to a model factory (--model package.module:factory)")
    kinds = get_args(ScheduleKind)
    if ns.schedule not in kinds:
        raise UsageError(f"unknown schedule {ns.schedule!r}; choose one of {', '.join(kinds)}")
    if ns.engine not in ENGINES:
        raise UsageError(f"unknown engine {ns.engine!r}; choose one of {', '.join(ENGINES)}")
    deepspeed = ns.engine == "deepspeed"
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise UsageError("--engine deepspeed needs DeepSpeed: DS_BUILD_OPS=0 pip install 'stagecut[deepspeed]'")
    if deepspeed and ns.schedule != "1f1b":
        raise UsageError("--engine deepspeed runs DeepSpeed's own 1F1B schedule; leave --schedule out")
    if ns.checkpointing and not deepspeed:
        raise UsageError("--checkpointing needs --engine deepspeed")
    if factory:
        from adapters.cli.model_source import parse_options

        options: tuple[tuple[str, Any], ...] = tuple(sorted(parse_options(ns.option).items()))
    else:
        options = (("batch", ns.batch), ("n_layers", 4)) if ns.model in ("gpt", "t5") else (("batch", ns.batch),)
    spec = TrainSpec(ns.model, options, (), ns.schedule, ns.steps, ns.microbatches, ns.lr, tracer=ns.tracer)
    if ns.cut:
        cuts = tuple(ns.cut)
    else:
        try:
            example = spec.build()
        except (ImportError, AttributeError, TypeError, ValueError) as err:
            raise UsageError(f"--model {ns.model}: {type(err).__name__}: {err}") from err
        traced = snapshot(example.model, *example.args, tracer=ns.tracer, **example.kwargs)
        cuts = tuple(str(c) for c in equal_blocks(traced, ns.stages).cuts)
    spec = TrainSpec(ns.model, options, cuts, ns.schedule, ns.steps, ns.microbatches, ns.lr,
                     engine=ns.engine, checkpointing=ns.checkpointing, tracer=ns.tracer)
    stages = len(cuts) + 1
    processes = ns.processes or (stages if ns.schedule in SINGLE else max(1, stages // 2))
    if deepspeed and processes != stages:
        raise UsageError(f"--engine deepspeed runs one stage per process: {stages} stages need {stages} processes")
    engine = "DeepSpeed, 1f1b" if deepspeed else f"schedule {ns.schedule}"
    print(f"{ns.model}: {stages} stages (cuts {', '.join(cuts) or 'none'}), {engine}, "
          f"{processes} processes, {ns.microbatches} microbatches", flush=True)
    start = time.perf_counter()
    results = launch(train_pipelined, processes, spec, True, timeout_s=600)
    print(f"trained in {time.perf_counter() - start:.1f} s (including process start-up)")
    if ns.no_check:
        return 0
    reference = train_reference(spec)
    losses = next(r.losses for r in results if r.losses)
    loss_gap = max(abs(a - b) for a, b in zip(losses, reference.losses))
    param_gap = max(
        float((value - reference.params[name]).abs().max()) for r in results for name, value in r.params.items()
    )
    same = loss_gap <= 1e-6 and param_gap <= 1e-6
    verdict = "matches" if same else "DIFFERS FROM"
    print(f"check: {verdict} the single-process run of the unsplit model "
          f"(max |loss diff| {loss_gap:.1e}, max |parameter diff| {param_gap:.1e})")
    return 0 if same else 1
