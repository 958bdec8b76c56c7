"""Tests for adapters.launch: rank-ordered results, fail-fast, timeout, no orphans."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from adapters.launch import LaunchError, launch

# Workers must be top-level functions: spawn pickles them by qualified name.


def _record_pid(pid_dir: Path, rank: int) -> None:
    (pid_dir / f"rank{rank}.pid").write_text(str(os.getpid()))


def _all_reduce_worker(rank: int, world_size: int, pid_dir: Path) -> tuple[int, int, torch.Tensor]:
    _record_pid(pid_dir, rank)
    t = torch.tensor([float(rank + 1), 10.0 * rank])
    dist.all_reduce(t)
    return rank, world_size, t


def _fail_while_peer_blocked(rank: int, world_size: int, pid_dir: Path) -> None:
    _record_pid(pid_dir, rank)
    if rank == 1:
        time.sleep(0.5)  # let rank 0 enter its blocking receive first
        (pid_dir / "raised_at").write_text(repr(time.time()))
        raise ValueError("boom from rank one")
    dist.recv(torch.zeros(1), src=1)  # never satisfied: only a kill ends it


def _sleep_worker(rank: int, world_size: int, pid_dir: Path) -> None:
    _record_pid(pid_dir, rank)
    time.sleep(600)


def _crash_worker(rank: int, world_size: int, pid_dir: Path) -> None:
    _record_pid(pid_dir, rank)
    if rank == 1:
        os._exit(3)
    dist.barrier()  # blocked in a collective when the peer dies


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); treat it as dead only if reaped
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_no_children(pid_dir: Path, expected: int | None) -> None:
    pids = [int(p.read_text()) for p in pid_dir.glob("rank*.pid")]
    if expected is not None:
        assert len(pids) == expected
    assert not [pid for pid in pids if _alive(pid)]
    assert multiprocessing.active_children() == []


def test_results_in_rank_order(tmp_path: Path) -> None:
    results = launch(_all_reduce_worker, 2, tmp_path, backend="gloo")
    assert [r[:2] for r in results] == [(0, 2), (1, 2)]
    for _, _, t in results:
        assert torch.equal(t, torch.tensor([3.0, 10.0]))
    _assert_no_children(tmp_path, 2)


def test_failing_rank_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_fail_while_peer_blocked, 2, tmp_path, timeout_s=60.0)
    caught_at = time.time()
    assert time.monotonic() - start < 30.0
    # Latency from the raise in rank 1 to the parent's LaunchError.
    assert caught_at - float((tmp_path / "raised_at").read_text()) < 5.0
    err = info.value
    assert err.rank == 1
    assert "rank 1" in str(err)
    assert "ValueError: boom from rank one" in str(err)
    assert err.remote_traceback is not None and "ValueError" in err.remote_traceback
    _assert_no_children(tmp_path, 2)


def test_timeout_kills_all(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(LaunchError, match="timed out") as info:
        launch(_sleep_worker, 2, tmp_path, timeout_s=5.0)
    assert time.monotonic() - start < 5.0 + 10.0  # timeout + kill grace, generously
    assert info.value.rank is None
    # Under heavy load a rank may not have reached fn (and written its pid) yet.
    _assert_no_children(tmp_path, None)


def test_rank_dying_without_report(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="exit code 3") as info:
        launch(_crash_worker, 2, tmp_path, timeout_s=60.0)
    assert info.value.rank == 1
    _assert_no_children(tmp_path, 2)


def test_rejects_bad_world_size() -> None:
    with pytest.raises(ValueError):
        launch(_sleep_worker, 0, Path("."))
