"""Will it fit, how fast: memory, communication and time figures for a plan and a schedule.

    found = figures(plan, snapshot, schedule="1f1b", microbatches=8, optimizer="adam")
    found.stages[0].memory.peak               # bytes stage 0 holds at its peak
    found.stages[0].comm.send_hops            # bytes it sends in one step
    found.bubble                              # the schedule's idle share, equal stages
    print(render_figures(found))              # the table `stagecut plan --schedule ...` prints

Per stage, peak memory = weights + buffers + gradients + optimizer state (`core.memory`)
+ the engine's receive buffers (torch.distributed.pipelining keeps one per microbatch for the
values a stage receives and for the gradients of those it sends, for the whole step)
+ in-flight microbatches x activations held per microbatch (`core.saved`: what autograd keeps
and the outputs the engine keeps until their backward, less what already sits in a receive
buffer). In flight: the most microbatches whose forward ran and whose backward has not, under
the schedule (`core.schedules`). Not counted: the loss function's own saved tensors, the
transient memory of one backward, allocator slack and workspaces.

The example inputs the snapshot was made with are one microbatch: every per-microbatch figure
is for inputs of that size.

Time (with per-stage forward and backward seconds, for example from `stage_seconds` over the
`measured` cost table): the schedule's step simulated with those durations and with the
communication of each hop at `bandwidth` bytes per second (`core.schedules.simulate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.comm import StageComm, boundary_bytes, stage_comm
from core.memory import FiguresError, StageWeights, check_dtype, check_optimizer, stage_weights
from core.plan import Plan
from core.saved import LeafSaved, StageSaved, saved_in_stages
from core.schedules import (
    Order,
    Timeline,
    check,
    default_ranks,
    in_flight,
    rank_actions,
    rank_of,
    rank_peak,
    simulate,
    unit_bubble,
)
from core.snapshot import Snapshot

__all__ = ["Figures", "StageMemory", "StageFigureSet", "figures", "stage_seconds", "FiguresError"]


@dataclass(frozen=True, slots=True)
class StageMemory:
    """Bytes one stage holds at its peak, by kind."""

    weights: StageWeights
    receive_buffers: int | None  # the engine's, for all microbatches
    activations: int | None  # held per microbatch in flight
    in_flight: int

    @property
    def peak(self) -> int | None:
        if self.activations is None or self.receive_buffers is None:
            return None
        return self.weights.total + self.receive_buffers + self.in_flight * self.activations


@dataclass(frozen=True, slots=True)
class StageFigureSet:
    """All figures of one stage."""

    index: int
    rank: int
    memory: StageMemory
    saved: StageSaved  # per microbatch: what autograd keeps
    comm: StageComm  # per step
    forward: float | None = None  # seconds per microbatch
    backward: float | None = None


@dataclass(frozen=True, slots=True)
class Figures:
    schedule: str
    microbatches: int
    ranks: int
    optimizer: str
    dtype: str | None
    bandwidth: float | None
    stages: tuple[StageFigureSet, ...]
    rank_peaks: tuple[int | None, ...]  # per rank: its stages' peak together, over the step
    bubble: float  # the schedule's idle share with equal stages (forward 1, backward 2)
    timeline: Timeline | None  # the step with the stages' own durations (when known)
    comm_seconds: float | None  # one step's transfers, end to end, at `bandwidth` (hop by hop)

    @property
    def step_seconds(self) -> float | None:
        return None if self.timeline is None else self.timeline.step

    @property
    def assumed(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for s in self.stages for a in s.saved.assumed))

    @property
    def peak(self) -> int | None:
        """The largest per-rank peak: the memory the devices need."""
        if any(p is None for p in self.rank_peaks):
            return None
        return max((p for p in self.rank_peaks if p is not None), default=0)

    def to_dict(self) -> dict[str, object]:
        """The figures as JSON-ready data (`stagecut plan --json` carries them)."""
        return {
            "schedule": self.schedule,
            "microbatches": self.microbatches,
            "ranks": self.ranks,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "bandwidth": self.bandwidth,
            "bubble": self.bubble,
            "step_seconds": self.step_seconds,
            "predicted_bubble": None if self.timeline is None else self.timeline.bubble,
            "comm_seconds": self.comm_seconds,
            "rank_peaks": list(self.rank_peaks),
            "assumed": list(self.assumed),
            "stages": [
                {
                    "index": s.index,
                    "rank": s.rank,
                    "params": s.memory.weights.params,
                    "weights": s.memory.weights.weights,
                    "buffers": s.memory.weights.buffers,
                    "grads": s.memory.weights.grads,
                    "optimizer": s.memory.weights.optimizer,
                    "receive_buffers": s.memory.receive_buffers,
                    "activations": s.memory.activations,
                    "saved_for_backward": s.saved.saved,
                    "in_flight": s.memory.in_flight,
                    "peak": s.memory.peak,
                    "send_hops": s.comm.send_hops,
                    "recv_hops": s.comm.recv_hops,
                    "send_direct": s.comm.send_direct,
                    "recv_direct": s.comm.recv_direct,
                    "forward_seconds": s.forward,
                    "backward_seconds": s.backward,
                    "why_unknown": s.saved.why,
                }
                for s in self.stages
            ],
        }


def figures(
    plan: Plan,
    snapshot: Snapshot,
    *,
    schedule: str = "1f1b",
    microbatches: int = 4,
    optimizer: str = "adam",
    dtype: str | None = None,
    ranks: int | None = None,
    bandwidth: float | None = None,
    latency: float = 0.0,
    forward: Sequence[float] | None = None,
    backward: Sequence[float] | None = None,
    measured: Mapping[str, Sequence[LeafSaved]] | None = None,
    saved: Sequence[StageSaved] | None = None,
) -> Figures:
    """The figures of `plan` (of `snapshot`) trained with this schedule (module doc).

    `ranks` defaults to `stagecut train`'s (one per stage for gpipe and 1f1b, else half the
    stages); a hop of `b` bytes takes `latency + b / bandwidth` seconds (`latency` only when
    `bandwidth` is given); `forward`/`backward` are seconds per microbatch per stage (`stage_seconds`);
    `measured` the `LeafSaved` records of untraced modules (`adapters.memory.leaf_saved`);
    `saved` reuses `core.saved.saved_in_stages` results. Raises `ScheduleError` or
    `FiguresError` (both `PlanError`s) for settings that cannot run."""
    if not isinstance(plan, Plan):
        raise TypeError(f"figures() takes a core.Plan, not {type(plan).__name__}")
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"figures() takes the plan's core.Snapshot, not {type(snapshot).__name__}")
    check_optimizer(optimizer)
    check_dtype(dtype)
    n = len(plan.stages)
    num_ranks = default_ranks(schedule, n) if ranks is None else ranks
    check(schedule, n, num_ranks, microbatches)
    if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0 or math.isinf(bandwidth)):
        raise FiguresError(f"bandwidth={bandwidth!r}: give bytes per second, a finite number > 0.")
    if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not 0 <= latency < math.inf:
        raise FiguresError(f"latency={latency!r}: give seconds per message, a finite number >= 0.")
    for name, values in (("forward", forward), ("backward", backward)):
        if values is not None and (len(values) != n or not all(v >= 0 and math.isfinite(v) for v in values)):
            raise FiguresError(f"{name} must give {n} finite seconds >= 0, one per stage.")
    order = rank_actions(schedule, n, num_ranks, microbatches)
    flight = in_flight(order, n)
    weights = stage_weights(plan, snapshot, optimizer=optimizer, dtype=dtype)
    found = tuple(saved) if saved is not None else saved_in_stages(plan, snapshot, measured=measured, dtype=dtype)
    comm = stage_comm(plan, microbatches, dtype)
    hops = boundary_bytes(plan, dtype)
    stages = []
    for s, stage in enumerate(plan.stages):
        received = hops[s - 1][0] if s > 0 else 0
        grads_back = hops[s][1] if s < n - 1 else 0
        buffers = None if received is None or grads_back is None else microbatches * (received + grads_back)
        memory = StageMemory(weights[s], buffers, found[s].held, flight[s])
        stages.append(
            StageFigureSet(
                s, rank_of(s, num_ranks), memory, found[s], comm[s],
                None if forward is None else float(forward[s]),
                None if backward is None else float(backward[s]),
            )
        )
    peaks = _rank_peaks(order, stages, num_ranks)
    timeline = None
    send_f = [_seconds(hops[s][0], bandwidth, latency) for s in range(n - 1)] + [0.0]
    send_b = [_seconds(hops[s][1], bandwidth, latency) for s in range(n - 1)] + [0.0]
    if forward is not None and backward is not None:
        if all(v is not None for v in send_f + send_b):
            timeline = simulate(
                order, n, forward=forward, backward=backward,
                send_forward=[v or 0.0 for v in send_f], send_backward=[v or 0.0 for v in send_b],
            )
    comm_seconds = None
    if bandwidth is not None and all(v is not None for v in send_f + send_b):
        comm_seconds = microbatches * math.fsum((v or 0.0) for v in send_f + send_b)
    return Figures(
        schedule, microbatches, num_ranks, optimizer, dtype, bandwidth, tuple(stages), peaks,
        unit_bubble(schedule, n, num_ranks, microbatches), timeline, comm_seconds,
    )


def _seconds(nbytes: int | None, bandwidth: float | None, latency: float = 0.0) -> float | None:
    if nbytes is None:
        return None
    if bandwidth is None or nbytes == 0:
        return 0.0
    return latency + nbytes / bandwidth


def _rank_peaks(order: Order, stages: Sequence[StageFigureSet], num_ranks: int) -> tuple[int | None, ...]:
    acts = [s.memory.activations for s in stages]
    if any(a is None or s.memory.receive_buffers is None for a, s in zip(acts, stages)):
        return tuple(None for _ in range(num_ranks))
    held = rank_peak(order, [float(a or 0) for a in acts])
    out = []
    for r in range(num_ranks):
        static = sum(s.memory.weights.total + (s.memory.receive_buffers or 0) for s in stages if s.rank == r)
        out.append(static + int(held[r]))
    return tuple(out)


def stage_seconds(
    plan: Plan, forward: Mapping[str, float], total: Mapping[str, float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per stage, forward and backward seconds per microbatch from module tables: `forward`
    (module path -> forward seconds) and `total` (-> forward + backward seconds), such as
    `adapters.fx.measure.module_seconds` gives without and with the backward. A stage costs the
    modules it calls whole (call_module nodes); a module missing from a table costs nothing."""
    fwd, bwd = [], []
    for stage in plan.stages:
        f = math.fsum(forward.get(m, 0.0) for m in stage.modules)
        t = math.fsum(total.get(m, 0.0) for m in stage.modules)
        fwd.append(f)
        bwd.append(max(0.0, t - f))
    return tuple(fwd), tuple(bwd)
