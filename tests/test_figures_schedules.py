"""core.schedules against torch.distributed.pipelining's own schedules: the action lists
(`pipeline_order`) action by action, the in-flight counts replayed from torch's lists, and the
bubble fractions against the closed forms where there is one."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch.distributed.pipelining import schedules as torch_schedules

from core import schedules
from core.schedules import Action, ScheduleError, in_flight, rank_actions, simulate, unit_bubble

TORCH = {
    "gpipe": torch_schedules.ScheduleGPipe,
    "1f1b": torch_schedules.Schedule1F1B,
    "interleaved": torch_schedules.ScheduleInterleaved1F1B,
    "looped_bfs": torch_schedules.ScheduleLoopedBFS,
    "zero_bubble": torch_schedules.ScheduleInterleavedZeroBubble,
}


class _Stage:
    """What torch's schedule constructors read from a stage (no process group needed)."""

    def __init__(self, index: int, num_stages: int, ranks: int) -> None:
        self.stage_index = index
        self.num_stages = num_stages
        self.group_size = ranks
        self.group_rank = index % ranks
        self.is_first = index == 0
        self.is_last = index == num_stages - 1
        self.submod = torch.nn.Identity()
        self.stage_index_to_group_rank: dict[int, int] = {}


def torch_order(kind: str, num_stages: int, ranks: int, microbatches: int) -> dict[int, list[Any]]:
    cls = TORCH[kind]
    if kind in schedules.SINGLE:
        return cls(_Stage(0, num_stages, ranks), microbatches).pipeline_order  # type: ignore[no-any-return]
    local = [_Stage(s, num_stages, ranks) for s in range(0, num_stages, ranks)]
    return cls(local, microbatches).pipeline_order  # type: ignore[no-any-return]


def as_core(actions: list[Any]) -> list[Action | None]:
    out: list[Action | None] = []
    for a in actions:
        if a is None:
            out.append(None)
        elif a.computation_type.value in "FBIW":
            out.append(Action(a.stage_index, a.computation_type.value, a.microbatch_index))
    return out


def settings() -> list[tuple[str, int, int, int]]:
    out = []
    for kind in schedules.SCHEDULES:
        for stages in (1, 2, 3, 4, 6, 8):
            ranks_options = [stages] if kind in schedules.SINGLE else [r for r in (1, 2, 3, 4) if stages % r == 0]
            for ranks, mbs in itertools.product(ranks_options, range(1, 13)):
                try:
                    schedules.check(kind, stages, ranks, mbs)
                except ScheduleError:
                    continue
                out.append((kind, stages, ranks, mbs))
    return out


SETTINGS = settings()


def test_settings_cover_every_schedule() -> None:
    assert {k for k, *_ in SETTINGS} == set(schedules.SCHEDULES)
    assert len(SETTINGS) > 300


@pytest.mark.parametrize("kind", schedules.SCHEDULES)
def test_action_lists_equal_torchs(kind: str) -> None:
    """Every setting of this kind: our list per rank is torch's, idle slots included (torch
    drops them from the single-stage schedules' lists, so there they are compared without)."""
    for k, stages, ranks, mbs in SETTINGS:
        if k != kind:
            continue
        theirs = torch_order(kind, stages, ranks, mbs)
        ours = rank_actions(kind, stages, ranks, mbs)
        for rank in range(ranks):
            expected = as_core(theirs[rank])
            got = list(ours[rank])
            if kind in schedules.SINGLE:
                got = [a for a in got if a is not None]
            if kind == "1f1b" and rank == ranks - 1:
                # torch describes the last rank's forwards as 1..M (it runs 0..M-1, as its
                # `_step_microbatches` does and as we list them): shift its description.
                expected = [Action(a.stage, a.kind, a.microbatch - 1) if a and a.kind == "F" else a for a in expected]
            assert got == expected, (kind, stages, ranks, mbs, rank)


def test_torch_1f1b_last_rank_description_is_off_by_one() -> None:
    """Pinning the torch quirk the comparison above corrects for; if torch fixes it, drop the shift."""
    order = torch_order("1f1b", 2, 2, 3)
    assert [str(a) for a in order[1] if a.computation_type.value == "F"] == ["1F1", "1F2", "1F3"]


@pytest.mark.parametrize("kind", schedules.SCHEDULES)
def test_in_flight_replayed_from_torchs_lists(kind: str) -> None:
    """In-flight counts from torch's own action lists equal ours (torch's 1F1B list counts the
    same once shifted, as it has as many forwards before each backward)."""
    for k, stages, ranks, mbs in SETTINGS:
        if k != kind:
            continue
        theirs = torch_order(kind, stages, ranks, mbs)
        replayed = in_flight(tuple(tuple(as_core(theirs[r])) for r in range(ranks)), stages)
        assert replayed == in_flight(rank_actions(kind, stages, ranks, mbs), stages), (kind, stages, ranks, mbs)


def test_in_flight_known_values() -> None:
    assert in_flight(rank_actions("gpipe", 4, 4, 8), 4) == (8, 8, 8, 8)
    assert in_flight(rank_actions("1f1b", 4, 4, 8), 4) == (4, 3, 2, 1)
    assert in_flight(rank_actions("1f1b", 4, 4, 4), 4) == (4, 3, 2, 1)
    assert in_flight(rank_actions("looped_bfs", 4, 2, 8), 4) == (8, 8, 8, 8)
    # zero bubble holds a microbatch until its weight backward
    zb = in_flight(rank_actions("zero_bubble", 4, 2, 8), 4)
    assert zb[0] >= in_flight(rank_actions("interleaved", 4, 2, 8), 4)[0]


@pytest.mark.parametrize("stages,mbs", [(2, 2), (4, 4), (4, 8), (8, 16), (3, 7)])
def test_bubble_closed_form_gpipe_1f1b(stages: int, mbs: int) -> None:
    """(p - 1) / (m + p - 1) for GPipe and 1F1B with forward 1 and backward 2."""
    expected = (stages - 1) / (mbs + stages - 1)
    assert unit_bubble("gpipe", stages, stages, mbs) == pytest.approx(expected)
    if mbs >= stages:
        assert unit_bubble("1f1b", stages, stages, mbs) == pytest.approx(expected)


@pytest.mark.parametrize("ranks,local,mbs", [(2, 2, 4), (2, 2, 8), (4, 2, 8), (2, 3, 6)])
def test_bubble_interleaved_closed_form(ranks: int, local: int, mbs: int) -> None:
    """Interleaved 1F1B with v stages per rank: (p - 1) / (v m + p - 1)."""
    got = unit_bubble("interleaved", ranks * local, ranks, mbs)
    assert got == pytest.approx((ranks - 1) / (local * mbs + ranks - 1))


def test_zero_bubble_has_the_smallest_bubble() -> None:
    zb = unit_bubble("zero_bubble", 8, 4, 8)
    assert zb < unit_bubble("interleaved", 8, 4, 8) < unit_bubble("looped_bfs", 8, 4, 8) + 1e-12


def test_simulate_communication_and_costs() -> None:
    """Two stages, one microbatch: F0 F1 B1 B0 in a chain, with a send each way."""
    order = rank_actions("gpipe", 2, 2, 1)
    t = simulate(order, 2, forward=[1.0, 2.0], backward=[3.0, 4.0], send_forward=[0.5, 0.0], send_backward=[0.25, 0.0])
    assert t.step == pytest.approx(1.0 + 0.5 + 2.0 + 4.0 + 0.25 + 3.0)
    assert t.busy == (4.0, 6.0)


def test_schedule_errors_name_the_fix() -> None:
    with pytest.raises(ScheduleError, match="microbatches"):
        rank_actions("1f1b", 4, 4, 2)
    with pytest.raises(ScheduleError, match="spread evenly"):
        rank_actions("interleaved", 6, 4, 8)
    with pytest.raises(ScheduleError, match="one stage per rank"):
        rank_actions("gpipe", 4, 2, 8)
    with pytest.raises(ScheduleError, match="choose one of"):
        rank_actions("pipedream", 4, 4, 8)
    with pytest.raises(ScheduleError, match="multiple of"):
        rank_actions("interleaved", 4, 2, 5)
