"""Hardening of the local launcher: a stopped rank fails the run within the watchdog's time and
is named; a rank's planning error travels to the parent typed (issue 13)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from adapters.launch import LaunchError, launch
from core import CutError


def _stop_rank_one(rank: int, world_size: int, folder: Path) -> int:
    dist.barrier()
    if rank == 1:
        (folder / "stopped_at").write_text(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGSTOP)  # the whole process, heartbeat thread included
    dist.barrier()  # rank 0 waits here for rank 1, alive but making no progress
    return rank


def _plan_error_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise CutError("cut 'blocks.9': no module has this path.")
    dist.barrier()
    return rank


def test_a_stopped_rank_fails_the_run_within_the_watchdog_time_and_is_named(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as info:
        launch(_stop_rank_one, 2, tmp_path, timeout_s=300.0, stall_s=3.0)
    caught = time.monotonic()
    stopped = float((tmp_path / "stopped_at").read_text())
    assert caught - stopped < 3.0 + 5.0  # the watchdog's time, and a generous margin on a busy machine
    err = info.value
    assert err.rank == 1
    message = str(err)
    assert "rank 1" in message and "made no progress" in message and "stopped" in message
    assert "rank 0" not in message  # it was waiting for rank 1, not stuck itself


def test_a_plan_error_on_a_rank_reaches_the_parent_typed() -> None:
    with pytest.raises(LaunchError) as info:
        launch(_plan_error_on_rank_one, 2, timeout_s=120.0)
    err = info.value
    assert err.rank == 1 and err.plan_error
    assert err.error_type == "core.errors.CutError"
    assert err.error_message == "cut 'blocks.9': no module has this path."


def test_launch_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="stall_s"):
        launch(_plan_error_on_rank_one, 2, stall_s=float("nan"))
    with pytest.raises(ValueError, match="timeout_s"):
        launch(_plan_error_on_rank_one, 2, timeout_s=-1.0)
    with pytest.raises(TypeError, match="world_size"):
        launch(_plan_error_on_rank_one, "2")  # type: ignore[arg-type]
