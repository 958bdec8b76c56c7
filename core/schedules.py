"""Pipeline schedules as data: who runs what, in which order, and what that costs in time.

    order = rank_actions("1f1b", num_stages=4, num_ranks=4, microbatches=8)
    in_flight(order, 4)                      # (4, 3, 2, 1): microbatches held per stage at the peak
    simulate(order, 4, forward=[1.0] * 4, backward=[2.0] * 4).bubble   # 3/11

The action lists are the ones `torch.distributed.pipelining` builds for its schedules
(`pipeline_order`), re-derived here without torch from the same rules (GPipe, 1F1B,
interleaved 1F1B, looped BFS, interleaved zero bubble), with the idle slots (`None`) it puts in
to line the ranks up. tests/test_figures_schedules.py compares them with torch's, action by
action. Stage `s` runs on rank `s % num_ranks` (torch's "loop" placement).

- `in_flight`: for each stage, the most microbatches whose forward has run and whose backward
  has not finished: what the stage holds activations for at its peak. A full backward (`B`)
  frees a microbatch; with zero bubble the input backward (`I`) keeps the graph alive (torch
  runs it with `retain_graph`) and the weight backward (`W`) frees it.
- `simulate`: the step as it runs when each action waits for its inputs, not for a slot: a
  forward needs the previous stage's forward of the microbatch (plus the time to send it); a
  backward needs the next stage's backward (plus the time to send the gradient) and its own
  forward; a weight backward its input backward. Ranks run their actions in list order. It
  gives the step time, each rank's busy time and the bubble fraction (idle share of
  ranks x step time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import PlanError

__all__ = [
    "Action",
    "Order",
    "SCHEDULES",
    "ScheduleError",
    "Timeline",
    "default_ranks",
    "in_flight",
    "rank_actions",
    "rank_of",
    "simulate",
    "unit_bubble",
]

ScheduleKind = Literal["gpipe", "1f1b", "interleaved", "looped_bfs", "zero_bubble"]
SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b", "interleaved", "looped_bfs", "zero_bubble")
SINGLE: frozenset[str] = frozenset({"gpipe", "1f1b"})  # one stage per rank
ActionKind = Literal["F", "B", "I", "W"]


class ScheduleError(PlanError):
    """A schedule cannot run with this stage count, rank count or microbatch count."""


@dataclass(frozen=True, slots=True)
class Action:
    """One computation of a schedule: the forward (`F`), full backward (`B`), input backward
    (`I`) or weight backward (`W`) of `microbatch` on `stage`."""

    stage: int
    kind: ActionKind
    microbatch: int

    def __str__(self) -> str:  # torch's spelling: 2F0
        return f"{self.stage}{self.kind}{self.microbatch}"


Order = tuple[tuple["Action | None", ...], ...]


def default_ranks(kind: str, num_stages: int) -> int:
    """The rank count `stagecut train` uses: one rank per stage for gpipe and 1f1b, two stages
    per rank for the others (one rank when there is a single stage)."""
    _check_kind(kind)
    if kind in SINGLE or num_stages == 1:
        return num_stages
    return max(1, num_stages // 2)


def rank_of(stage: int, num_ranks: int) -> int:
    """The rank that runs `stage` (torch's "loop" placement)."""
    return stage % num_ranks


def check(kind: str, num_stages: int, num_ranks: int, microbatches: int) -> None:
    """Raise `ScheduleError` (naming the fix) when torch's schedule would refuse these counts."""
    _check_kind(kind)
    for name, value in (("stages", num_stages), ("ranks", num_ranks), ("microbatches", microbatches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScheduleError(f"{name}={value!r}: it must be an integer >= 1.")
    if num_stages % num_ranks:
        raise ScheduleError(
            f"{num_stages} stages do not spread evenly over {num_ranks} ranks; "
            "cut into a multiple of the rank count."
        )
    if kind in SINGLE and num_stages != num_ranks:
        raise ScheduleError(
            f"schedule {kind!r} runs one stage per rank, but {num_stages} stages are on "
            f"{num_ranks} ranks; use {num_stages} ranks, or 'interleaved'."
        )
    if kind == "1f1b" and microbatches < num_stages:
        raise ScheduleError(
            f"schedule '1f1b' needs at least as many microbatches as stages "
            f"({microbatches} < {num_stages}); use --microbatches {num_stages} or more, or 'gpipe'."
        )
    if kind in ("interleaved", "zero_bubble"):
        rounds = max(1, microbatches // num_ranks)
        if microbatches % rounds:
            raise ScheduleError(
                f"schedule {kind!r} needs the microbatch count to be a multiple of the number of "
                f"rounds ({rounds} = {microbatches} // {num_ranks} ranks); use a multiple of "
                f"{num_ranks} microbatches."
            )


def _check_kind(kind: str) -> None:
    if kind not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}.")


def rank_actions(kind: str, num_stages: int, num_ranks: int, microbatches: int) -> Order:
    """Each rank's actions in order, with torch's idle slots (`None`); see the module doc."""
    check(kind, num_stages, num_ranks, microbatches)
    if kind == "gpipe":
        return tuple(_gpipe(r, num_stages, microbatches) for r in range(num_ranks))
    if kind == "1f1b":
        return tuple(_one_f_one_b(r, num_stages, microbatches) for r in range(num_ranks))
    if kind == "looped_bfs":
        return tuple(_looped_bfs(r, num_stages, num_ranks, microbatches) for r in range(num_ranks))
    local = num_stages // num_ranks
    zero = kind == "zero_bubble"
    order = tuple(_interleaved(r, local, num_ranks, microbatches, zero) for r in range(num_ranks))
    return _add_bubbles(order, num_stages) if zero else order


def _gpipe(rank: int, stages: int, mbs: int) -> tuple[Action | None, ...]:
    out: list[Action | None] = [None] * rank
    out += [Action(rank, "F", m) for m in range(mbs)]
    out += [None] * (3 * (stages - 1 - rank))
    out += [Action(rank, "B", m) for m in range(mbs)]
    return tuple(out)


def _one_f_one_b(rank: int, stages: int, mbs: int) -> tuple[Action | None, ...]:
    """Warm up with `stages - 1 - rank` forwards, then one forward and one backward at a time,
    then the remaining backwards. (torch's `pipeline_order` for the last rank starts at
    forward 1, an off-by-one in its description only: it runs forward 0 first, as here.)"""
    warmup = stages - 1 - rank
    out: list[Action | None] = [None] * rank
    out += [Action(rank, "F", m) for m in range(warmup)]
    out += [None] * (2 * warmup)
    for k in range(mbs - warmup):
        out += [Action(rank, "F", warmup + k), Action(rank, "B", k)]
    for k in range(mbs - warmup, mbs):
        out += [None, Action(rank, "B", k)]
    return tuple(out)


def _looped_bfs(rank: int, stages: int, ranks: int, mbs: int) -> tuple[Action | None, ...]:
    local = range(rank, stages, ranks)
    out: list[Action | None] = [None] * rank
    for s in local:
        out += [Action(s, "F", m) for m in range(mbs)]
    out += [None] * (2 * (ranks - 1 - rank))
    for s in reversed(local):
        out += [Action(s, "B", m) for m in reversed(range(mbs))]
    return tuple(out)


def _interleaved(rank: int, local: int, ranks: int, mbs: int, zero: bool) -> tuple[Action | None, ...]:
    """torch's `_get_1f1b_rank_ops` for interleaved 1F1B (`zero=False`) and interleaved zero
    bubble (ZB1P, `zero=True`), before zero bubble's alignment pass."""
    rounds = max(1, mbs // ranks)
    per_round = mbs // rounds
    factor = 1 if zero else 2
    warmup = min((local - 1) * per_round + factor * (ranks - 1 - rank), mbs * local)
    steady = mbs * local - warmup
    total = warmup + steady + warmup  # the cooldown has as many backwards as the warmup forwards

    def forward_stage(step: int) -> int:
        return (step // per_round) % local * ranks + rank

    def backward_stage(step: int) -> int:
        return (local - 1 - ((step - warmup) // per_round) % local) * ranks + rank

    post_warmup = ranks - rank - 1 if zero else local * ranks + 2 * (ranks - 1 - rank) - (warmup + rank)
    next_mb: dict[tuple[str, int], int] = {}

    def take(kind: ActionKind, stage: int) -> Action:
        m = next_mb.get((kind, stage), 0)
        next_mb[(kind, stage)] = m + 1
        return Action(stage, kind, m)

    back: ActionKind = "I" if zero else "B"
    out: list[Action | None] = [None] * rank
    backward_steps: list[int] = []
    weights_done = 0
    for step in range(total):
        if step < warmup:
            out.append(take("F", forward_stage(step)))
            if step == warmup - 1:
                out += [None] * post_warmup
            continue
        if step < warmup + steady:
            out.append(take("F", forward_stage(step)))
        elif not zero:
            out.append(None)
        out.append(take(back, backward_stage(step)))
        backward_steps.append(step)
        if zero and step - warmup >= rank:  # ZB1P: the first `rank` steady steps defer W
            out.append(take("W", backward_stage(backward_steps[weights_done])))
            weights_done += 1
    while zero and weights_done < len(backward_steps):
        out.append(take("W", backward_stage(backward_steps[weights_done])))
        weights_done += 1
    return tuple(out)


def _add_bubbles(order: Order, num_stages: int) -> Order:
    """torch's `_add_bubbles_to_actions` for zero bubble: step all ranks in lock step and put an
    idle slot where an action's forward input (or full backward input) is not made yet."""
    seen: set[tuple[int, str, int]] = set()
    result: list[list[Action | None]] = [[] for _ in order]
    pointer = [0] * len(order)
    while True:
        stop = True
        new: set[tuple[int, str, int]] = set()
        for rank, actions in enumerate(order):
            t = pointer[rank]
            if t >= len(actions):
                continue
            stop = False
            action = actions[t]
            if action is None:
                pointer[rank] += 1
                result[rank].append(None)
                continue
            s, kind, m = action.stage, action.kind, action.microbatch
            if kind == "F":
                blocked = s != 0 and (s - 1, "F", m) not in seen
            elif kind == "B":
                blocked = (s, "F", m) not in seen if s == num_stages - 1 else (s + 1, "B", m) not in seen
            else:
                blocked = False
            if blocked:
                result[rank].append(None)
            else:
                result[rank].append(action)
                new.add((s, kind, m))
                pointer[rank] += 1
        seen |= new
        if stop:
            return tuple(tuple(r) for r in result)


def in_flight(order: Order, num_stages: int) -> tuple[int, ...]:
    """For each stage, the most microbatches it holds activations for at once (see module doc)."""
    held = [0] * num_stages
    peak = [0] * num_stages
    for actions in order:
        for action in actions:
            if action is None:
                continue
            if action.kind == "F":
                held[action.stage] += 1
                peak[action.stage] = max(peak[action.stage], held[action.stage])
            elif action.kind in ("B", "W"):
                held[action.stage] -= 1
    return tuple(peak)


def rank_peak(order: Order, activation: Sequence[float]) -> tuple[float, ...]:
    """For each rank, the most activation memory it holds at once: `activation[s]` per microbatch
    of stage `s` in flight, summed over the rank's stages at each point of its action list."""
    out = []
    for actions in order:
        held = 0.0
        peak = 0.0
        for action in actions:
            if action is None:
                continue
            if action.kind == "F":
                held += activation[action.stage]
                peak = max(peak, held)
            elif action.kind in ("B", "W"):
                held -= activation[action.stage]
        out.append(peak)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Timeline:
    """What `simulate` found: the step time, each rank's busy time, the idle share."""

    step: float
    busy: tuple[float, ...]  # per rank: seconds computing
    finish: tuple[float, ...]  # per rank: when its last action ends

    @property
    def bubble(self) -> float:
        """Idle share of ranks x step time (0 = no bubble)."""
        if self.step <= 0:
            return 0.0
        return 1.0 - math.fsum(self.busy) / (len(self.busy) * self.step)


def simulate(
    order: Order,
    num_stages: int,
    *,
    forward: Sequence[float],
    backward: Sequence[float],
    send_forward: Sequence[float] | None = None,
    send_backward: Sequence[float] | None = None,
    weight_share: float = 0.5,
) -> Timeline:
    """Run `order` with these durations: `forward[s]`/`backward[s]` seconds per microbatch of
    stage `s` (with zero bubble, `I` takes `(1 - weight_share) * backward[s]` and `W` the
    rest); `send_forward[s]` the seconds to send stage `s`'s outputs to stage `s+1`,
    `send_backward[s]` to send stage `s+1`'s input gradients back to `s` (zero between stages of
    one rank). Each action starts when its rank is free and its inputs have arrived."""
    num_ranks = len(order)
    sends_f = list(send_forward) if send_forward is not None else [0.0] * num_stages
    sends_b = list(send_backward) if send_backward is not None else [0.0] * num_stages
    done: dict[tuple[int, str, int], float] = {}
    free = [0.0] * num_ranks
    busy = [0.0] * num_ranks
    lists = [[a for a in actions if a is not None] for actions in order]
    pointer = [0] * num_ranks
    remaining = sum(len(x) for x in lists)
    while remaining:
        progressed = False
        for rank in range(num_ranks):
            while pointer[rank] < len(lists[rank]):
                action = lists[rank][pointer[rank]]
                ready = _ready(action, done, num_stages, num_ranks, sends_f, sends_b)
                if ready is None:
                    break
                s = action.stage
                if action.kind == "F":
                    length = forward[s]
                elif action.kind == "B":
                    length = backward[s]
                elif action.kind == "I":
                    length = backward[s] * (1.0 - weight_share)
                else:
                    length = backward[s] * weight_share
                start = max(free[rank], ready)
                free[rank] = start + length
                busy[rank] += length
                done[(s, action.kind, action.microbatch)] = free[rank]
                pointer[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = [str(lists[r][pointer[r]]) for r in range(num_ranks) if pointer[r] < len(lists[r])]
            raise ScheduleError(f"the schedule cannot proceed: every rank waits ({', '.join(stuck)}).")
    return Timeline(max(free, default=0.0), tuple(busy), tuple(free))


def _ready(
    action: Action,
    done: dict[tuple[int, str, int], float],
    num_stages: int,
    num_ranks: int,
    sends_f: Sequence[float],
    sends_b: Sequence[float],
) -> float | None:
    """When the inputs of `action` are there, or None if one is not made yet."""
    s, m = action.stage, action.microbatch
    if action.kind == "F":
        if s == 0:
            return 0.0
        t = done.get((s - 1, "F", m))
        if t is None:
            return None
        return t + (0.0 if rank_of(s - 1, num_ranks) == rank_of(s, num_ranks) else sends_f[s - 1])
    if action.kind == "W":
        return done.get((s, "I", m))
    own = done.get((s, "F", m))
    if own is None:
        return None
    if s == num_stages - 1:
        return own
    after = done.get((s + 1, "B", m))
    if after is None:
        after = done.get((s + 1, "I", m))
    if after is None:
        return None
    hop = 0.0 if rank_of(s + 1, num_ranks) == rank_of(s, num_ranks) else sends_b[s]
    return max(own, after + hop)


def unit_bubble(kind: str, num_stages: int, num_ranks: int, microbatches: int) -> float:
    """The schedule's own bubble fraction with equal stages: forward 1, backward 2 (input and
    weight backward 1 each), no communication time."""
    order = rank_actions(kind, num_stages, num_ranks, microbatches)
    ones = [1.0] * num_stages
    return simulate(order, num_stages, forward=ones, backward=[2.0] * num_stages).bubble
