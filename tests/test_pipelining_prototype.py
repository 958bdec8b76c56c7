"""Proof that hand-written stages driven by torch.distributed.pipelining train exactly
like the unsplit model, plus the engine facts docs/pipelining-notes.md relies on.

Every launch spawns 2 ranks that import torch.distributed.pipelining (seconds
each on 2 cores), so all runs and fact checks share a single launch.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe, ScheduleLoopedBFS

from adapters._pipelining_prototype import (
    RunResult,
    ScheduleName,
    TinyConfig,
    TinyGPT,
    pipelined_worker,
    run_key,
    run_reference,
    split_tiny_gpt,
    stage_ranks,
    tied_parameter_ranks,
)
from adapters.launch import launch

# (schedule, num_stages, engine_scales_grads).  Loop placement (stage s on rank
# s % 2) puts the tied embedding/head on different ranks; V placement (0,1,1,0)
# puts both on rank 0, where the engine's own grad scaling is wrong.
RUNS: list[tuple[ScheduleName, int, bool]] = [
    ("gpipe", 2, True),
    ("1f1b", 2, True),
    ("interleaved_1f1b", 4, True),
    ("looped_bfs", 4, True),
    ("interleaved_zero_bubble", 4, True),
    ("zbv_zero_bubble", 4, False),
    ("zbv_zero_bubble", 4, True),
]
EXACT_RUNS = RUNS[:-1]
STEPS, BATCH, N_MB, LR = 3, 8, 4, 0.1


@pytest.fixture(scope="module")
def launched() -> list[dict[str, Any]]:
    # One launch for everything: spawning ranks dominates the test time.
    return launch(_everything_worker, 2, timeout_s=120.0, backend="gloo")


@pytest.fixture(scope="module")
def pipelined(launched: list[dict[str, Any]]) -> list[dict[str, RunResult]]:
    return [r["runs"] for r in launched]


@pytest.fixture(scope="module")
def reference() -> RunResult:
    return run_reference(TinyConfig(), STEPS, BATCH, N_MB, LR)


def _merged(pipelined: list[dict[str, RunResult]], run: tuple[Any, int, bool]) -> tuple[list[float], dict[str, list[torch.Tensor]]]:
    key = run_key(*run)
    last_rank = stage_ranks(run[0], 2, run[1])[-1]
    for rank in (0, 1):
        assert (pipelined[rank][key].losses != []) == (rank == last_rank)
    params: dict[str, list[torch.Tensor]] = {}
    for rank in (0, 1):
        for name, value in pipelined[rank][key].params.items():
            params.setdefault(name, []).append(value)
    return pipelined[last_rank][key].losses, params


@pytest.mark.parametrize("run", EXACT_RUNS, ids=lambda r: run_key(*r))
def test_matches_single_process(
    pipelined: list[dict[str, RunResult]],
    reference: RunResult,
    run: tuple[Any, int, bool],
) -> None:
    losses, params = _merged(pipelined, run)
    assert losses == pytest.approx(reference.losses, abs=1e-6, rel=0)
    assert set(params) == set(reference.params)
    for name, copies in params.items():
        for value in copies:
            torch.testing.assert_close(value, reference.params[name], atol=1e-6, rtol=0)
    # One copy of the tied weight per holding rank, all kept identical.
    ranks = stage_ranks(run[0], 2, run[1])
    assert len(params["emb.weight"]) == (1 if ranks[0] == ranks[-1] else 2)


def test_engine_grad_scaling_double_divides_weight_shared_on_one_rank(
    pipelined: list[dict[str, RunResult]], reference: RunResult
) -> None:
    # Each stage's REDUCE_GRAD divides its own submodule's grads by
    # n_microbatches; a Parameter in two stages of one rank is divided twice.
    losses, params = _merged(pipelined, ("zbv_zero_bubble", 4, True))
    assert losses[0] == pytest.approx(reference.losses[0], abs=1e-9)  # step 1 forward is fine
    diff = (params["emb.weight"][0] - reference.params["emb.weight"]).abs().max()
    assert float(diff) > 1e-3


def test_reference_learns(reference: RunResult) -> None:
    # Guards against a vacuous comparison (e.g. zero grads everywhere).
    assert reference.losses[-1] < reference.losses[0] - 0.1


def test_tied_parameter_detection() -> None:
    model = TinyGPT(TinyConfig())
    stages = split_tiny_gpt(model, 4)
    assert tied_parameter_ranks(model, stages, [0, 1, 0, 1]) == {"emb.weight": [0, 1]}
    # Same rank for both ends (V-style placement): nothing to all-reduce.
    assert tied_parameter_ranks(model, stages, [0, 1, 1, 0]) == {}


# ---- engine facts -----------------------------------------------------------

D = 3


class _First(nn.Module):
    def __init__(self, none_output: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D, dtype=torch.float64)
        self.calls: list[torch.Tensor] = []
        self.none_output = none_output

    def forward(self, x: torch.Tensor) -> Any:
        self.calls.append(x.detach().clone())
        h = self.lin(x)
        return (h, None) if self.none_output else (h, (h * h).mean())


class _Last(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D, dtype=torch.float64)
        self.calls: list[torch.Tensor] = []

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(h.detach().clone())
        return self.lin(h) * z, z  # tuple output; z passed through unchanged


_loss_input_types: list[str] = []


def _fact_loss(out: Any, target: torch.Tensor) -> torch.Tensor:
    y, z = out
    loss: torch.Tensor = ((y - target) ** 2).mean() + z
    return loss


def _recording_loss(out: Any, target: torch.Tensor) -> torch.Tensor:
    _loss_input_types.append(type(out).__name__)  # what the schedule hands over
    return _fact_loss(out, target)


def _fact_modules() -> tuple[_First, _Last]:
    torch.manual_seed(0)
    return _First(), _Last()


def _fact_grads(static: bool, z_requires_grad: bool) -> dict[str, Any]:
    rank = dist.get_rank()
    mod = _fact_modules()[rank]
    kw: dict[str, Any] = {}
    if static:
        a = torch.zeros(2, D, dtype=torch.float64, requires_grad=True)
        z = torch.zeros((), dtype=torch.float64, requires_grad=z_requires_grad)
        kw = (
            {"input_args": (a,), "output_args": (a, z)}
            if rank == 0
            else {"input_args": (a, z), "output_args": (a, z)}
        )
    stage = PipelineStage(mod, rank, 2, torch.device("cpu"), **kw)
    sched = ScheduleGPipe(stage, n_microbatches=N_MB, loss_fn=_recording_loss)
    x = torch.randn(2 * N_MB, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    calls_per_step = []
    for _ in range(2):
        mod.zero_grad(set_to_none=True)
        before = len(mod.calls)
        sched.step(*((x,) if rank == 0 else ()), target=x, return_outputs=False)
        calls_per_step.append(len(mod.calls) - before)
    # No optimizer: the second step's grads equal one local unsplit backward.
    first, last = _fact_modules()
    mbs = x.tensor_split(N_MB)
    total = torch.stack([_fact_loss(last(*first(mb)), mb) for mb in mbs]).mean()
    torch.autograd.backward(total)
    ref = (first, last)[rank]
    grads_ok = all(
        torch.allclose(p.grad, q.grad)  # type: ignore[arg-type]
        for p, q in zip(mod.parameters(), ref.parameters(), strict=True)
    )
    real_first_input = torch.equal(mod.calls[0], x.tensor_split(N_MB)[0]) if rank == 0 else None
    return {
        "calls_per_step": calls_per_step,
        "grads_ok": grads_ok,
        "first_call_saw_real_microbatch": real_first_input,
        "last_stage_call0_equals_call1": (
            torch.equal(mod.calls[0], mod.calls[1]) if rank == 1 else None
        ),
    }


def _none_output_error(solo: dist.ProcessGroup) -> str:
    # Both stages on this rank (group of one): the failure stays local instead
    # of leaving a peer blocked in a receive.
    stages = [
        PipelineStage(_First(none_output=True), 0, 2, torch.device("cpu"), group=solo),
        PipelineStage(_Last(), 1, 2, torch.device("cpu"), group=solo),
    ]
    sched = ScheduleLoopedBFS(stages, n_microbatches=2, loss_fn=_fact_loss)  # type: ignore[arg-type]
    x = torch.zeros(4, D, dtype=torch.float64)
    try:
        sched.step(x, target=x)
    except Exception as e:  # noqa: BLE001 - the message is the fact under test
        return f"{type(e).__name__}: {e}"
    return "no error"


def _facts_worker(rank: int, world_size: int) -> dict[str, Any]:
    solo = dist.new_group([0])  # collective: every rank creates it
    out = {
        "dynamic": _fact_grads(static=False, z_requires_grad=True),
        "static": _fact_grads(static=True, z_requires_grad=True),
        "static_z_no_grad": _fact_grads(static=True, z_requires_grad=False),
        "loss_input_types": sorted(set(_loss_input_types)),
    }
    if rank == 0:
        out["none_output"] = _none_output_error(solo)
    return out


def _everything_worker(rank: int, world_size: int) -> dict[str, Any]:
    return {
        "runs": pipelined_worker(rank, world_size, RUNS),
        "facts": _facts_worker(rank, world_size),
    }


@pytest.fixture(scope="module")
def facts(launched: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["facts"] for r in launched]


def test_dynamic_inference_runs_extra_forward_on_uninitialized_inputs(facts: list[dict[str, Any]]) -> None:
    r0, r1 = facts[0]["dynamic"], facts[1]["dynamic"]
    # One extra forward per stage on the first step only.
    assert r0["calls_per_step"] == [N_MB + 1, N_MB]
    assert r1["calls_per_step"] == [N_MB + 1, N_MB]
    # Stage 0 infers from the real first microbatch; later stages from
    # torch.empty_strided buffers (garbage), not the real activation.
    assert r0["first_call_saw_real_microbatch"] is True
    assert r1["last_stage_call0_equals_call1"] is False
    assert r0["grads_ok"] and r1["grads_ok"]


def test_static_metadata_skips_inference(facts: list[dict[str, Any]]) -> None:
    for rank in (0, 1):
        assert facts[rank]["static"]["calls_per_step"] == [N_MB, N_MB]
        assert facts[rank]["static"]["grads_ok"]


def test_zero_d_output_declared_without_grad_gets_wrong_gradient(facts: list[dict[str, Any]]) -> None:
    # The producer backprops an implicit 1.0 for the 0-d output: silently wrong.
    assert facts[0]["static_z_no_grad"]["grads_ok"] is False
    assert facts[1]["static_z_no_grad"]["grads_ok"] is True


def test_last_stage_tuple_output_reaches_loss_fn_as_tuple(facts: list[dict[str, Any]]) -> None:
    assert facts[1]["loss_input_types"] == ["tuple"]


def test_non_tensor_stage_output_is_rejected(facts: list[dict[str, Any]]) -> None:
    msg = facts[0]["none_output"]
    assert msg.startswith("PipeliningMetadataError")
    assert "must be tensors" in msg
