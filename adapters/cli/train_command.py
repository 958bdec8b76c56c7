"""`stagecut train`: train a built-in example on the pipeline engine in local processes, then
check the result against a single-process run of the unsplit model."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from typing import Any, get_args

from adapters.cli import files
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
    parser.add_argument("--tracer", choices=("auto", "fx", "export"),
                        help="how to trace the model: fx, torch.export, or auto (default)")
    parser.add_argument("--stages", type=int, metavar="N", help="number of stages (default: 2)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS",
        help="a process that makes no progress for this long fails the run, named (default: 300)",
    )
    parser.add_argument("--cut", action="append", default=[], metavar="PATH", help="explicit cuts instead of --stages")
    parser.add_argument(
        "--plan", metavar="FILE",
        help="train the stages of a plan JSON (stagecut plan --json FILE) made for this model, instead of "
        "tracing and cutting it; the file is data: it may only call stagecut's allow-list (docs/security.md)",
    )
    parser.add_argument(
        "--trust-module", action="append", default=[], metavar="MODULE",
        help="let the --plan file call functions defined in MODULE (package.module; repeatable); trust only "
        "modules whose functions are safe to call with any arguments",
    )
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


def check_numbers(ns: argparse.Namespace) -> None:
    """The numeric arguments, before anything is imported or spawned: each bad one is a
    `UsageError` naming it (exit code 2)."""
    for name in ("steps", "microbatches", "batch"):
        value = getattr(ns, name)
        if value < 1:
            raise UsageError(f"--{name} {value}: it must be at least 1")
    if ns.stages is not None and ns.stages < 1:
        raise UsageError(f"--stages {ns.stages}: it must be at least 1")
    if ns.stages is not None and ns.cut:
        raise UsageError("--stages and --cut both say where to cut; give one or the other")
    if ns.plan is not None and (ns.cut or ns.stages is not None or ns.tracer is not None):
        raise UsageError("--plan already says where to cut and how the model was traced; leave out --cut, --stages and --tracer")
    if ns.trust_module and ns.plan is None:
        raise UsageError("--trust-module widens what a --plan file may call; without --plan the model is traced "
                         "in this process and its own functions are trusted already")
    for name in ns.trust_module:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise UsageError(f"--trust-module {name!r}: give a module name (package.module)")
    if ns.processes is not None and ns.processes < 1:
        raise UsageError(f"--processes {ns.processes}: it must be at least 1")
    if not math.isfinite(ns.lr) or ns.lr <= 0:
        raise UsageError(f"--lr {ns.lr}: the learning rate must be a finite number > 0")
    if not math.isfinite(ns.timeout) or ns.timeout <= 0:
        raise UsageError(f"--timeout {ns.timeout}: it must be a finite number of seconds > 0")
    if ":" not in ns.model and ns.batch % ns.microbatches:
        raise UsageError(
            f"--batch {ns.batch} does not split into --microbatches {ns.microbatches}; "
            "give a batch size that is a multiple of the microbatch count"
        )


def check_layout(stages: int, processes: int, schedule: str, microbatches: int, single: bool) -> None:
    """Stages, processes and microbatches that the schedule can run (what `Pipeline` and torch's
    schedules would refuse on every rank, refused here first)."""
    if single and stages != processes:
        raise UsageError(
            f"schedule {schedule!r} runs one stage per process: {stages} stages need --processes {stages} "
            "(or use interleaved, looped_bfs or zero_bubble)"
        )
    if stages % processes:
        raise UsageError(
            f"{stages} stages do not spread evenly over {processes} processes; "
            "give a number of stages that is a multiple of --processes"
        )
    if schedule == "1f1b" and microbatches < stages:
        raise UsageError(f"schedule '1f1b' needs at least as many microbatches as stages ({stages}); give --microbatches {stages} or more")
    if schedule in ("interleaved", "zero_bubble"):
        rounds = max(1, microbatches // processes)
        if microbatches % rounds:
            raise UsageError(
                f"schedule {schedule!r} needs --microbatches to be a multiple of the number of rounds "
                f"({rounds} = microbatches // processes); try --microbatches {rounds * processes}"
            )


def check_inputs(example: Any, microbatches: int) -> None:
    """Every batched input (a tensor with a first dimension) splits into the microbatches."""
    import torch

    for value in (*example.args, *example.kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] % microbatches:
            raise UsageError(
                f"the model's input of shape {tuple(value.shape)} does not split into --microbatches "
                f"{microbatches} on its first dimension; give a microbatch count that divides {value.shape[0]}"
            )


def check_plan_file(planned: Any, example: Any, trusted_modules: list[str]) -> None:
    """What every rank would refuse in a plan read from a file, refused once here: a call
    outside the allow-list and the trusted modules (`UntrustedTarget`), an attribute the model
    lacks or has with another shape (`PlanDoesNotFit`), inputs the first stage does not take.
    Building the stage modules checks the first two; nothing in them runs."""
    from adapters.engine.inputs import bind_inputs
    from adapters.graph.stages import stage_modules

    stage_modules(planned, example.model, trusted_modules=trusted_modules)
    bind_inputs(planned.stages[0], example.args, example.kwargs)


def run(ns: argparse.Namespace) -> int:
    check_numbers(ns)
    from adapters.fx import snapshot
    from adapters.launch import LaunchError, launch
    from adapters.pipelining.check import TrainSpec, train_pipelined, train_reference
    from adapters.pipelining.schedule import ScheduleKind, SINGLE
    from core import Plan, PlanError
    from core import plan as make_plan

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
    tracer: Any = ns.tracer or "auto"  # one of the parser's choices
    plan_json = "" if ns.plan is None else files.read_text(ns.plan, "plan")
    planned = None if ns.plan is None else Plan.from_json(plan_json)  # MalformedPlan: exit code 2
    spec = TrainSpec(ns.model, options, (), ns.schedule, ns.steps, ns.microbatches, ns.lr, tracer=tracer)
    # Everything the ranks would refuse is refused here, before a process is spawned: the
    # model, its inputs, the cuts (planned once) or the plan file, the schedule's layout.
    try:
        example = spec.build()
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise UsageError(f"--model {ns.model}: {type(err).__name__}: {err}") from err
    check_inputs(example, ns.microbatches)
    if planned is None:
        traced = snapshot(example.model, *example.args, tracer=tracer, **example.kwargs)
        if ns.cut:
            cuts = tuple(ns.cut)
        else:
            cuts = tuple(str(c) for c in equal_blocks(traced, ns.stages or 2).cuts)
        make_plan(traced, cuts)  # a bad cut is a PlanError now, one line and exit code 2
    else:
        check_plan_file(planned, example, ns.trust_module)
        cuts = tuple(str(c) for c in planned.cuts)
    spec = TrainSpec(ns.model, options, () if planned else cuts, ns.schedule, ns.steps, ns.microbatches, ns.lr,
                     engine=ns.engine, checkpointing=ns.checkpointing, tracer=tracer,
                     plan_json=plan_json, trusted_modules=tuple(ns.trust_module))
    stages = len(cuts) + 1 if planned is None else len(planned.stages)
    processes = ns.processes or (stages if ns.schedule in SINGLE else max(1, stages // 2))
    if deepspeed and processes != stages:
        raise UsageError(f"--engine deepspeed runs one stage per process: {stages} stages need {stages} processes")
    if not deepspeed:
        check_layout(stages, processes, ns.schedule, ns.microbatches, ns.schedule in SINGLE)
    engine = "DeepSpeed, 1f1b" if deepspeed else f"schedule {ns.schedule}"
    source = f"plan {ns.plan}, " if ns.plan else ""
    print(f"{ns.model}: {source}{stages} stages (cuts {', '.join(cuts) or 'none'}), {engine}, "
          f"{processes} processes, {ns.microbatches} microbatches", flush=True)
    start = time.perf_counter()
    # Ranks killed after a failure leave semaphores behind, which multiprocessing's resource
    # tracker (started by launch, with these warning options) removes with a warning: noise
    # after the one line that says what failed.
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    try:
        results = launch(train_pipelined, processes, spec, True, timeout_s=None, stall_s=ns.timeout)
    except LaunchError as err:
        if err.plan_error:  # bad input met on a rank: the promise is one line and exit code 2
            raise PlanError(err.error_message or str(err)) from None
        if err.remote_traceback is None:  # a stopped, hung or dead rank: say which, no traceback
            print(f"stagecut: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 1
        raise
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
