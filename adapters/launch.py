"""Local multi-process launcher for torch.distributed code (tests and the CLI).

``launch(fn, world_size, *args)`` spawns ``world_size`` processes, joins them into
one process group over TCP on 127.0.0.1, runs ``fn(rank, world_size, *args)`` in
each and returns the results in rank order.  It fails fast: the first rank that
raises (or dies) makes every other rank get killed, even one blocked in a
collective, and the parent raises :class:`LaunchError` with that rank's traceback.

With ``stall_s``, a watchdog fails the launch as soon as a rank stops making
progress for that long: each rank's heartbeat thread writes the time into shared
memory, so a rank that is stopped (SIGSTOP), frozen or stuck holding the
interpreter is named, while its peers, blocked waiting for it, are not.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from core.errors import PlanError

__all__ = ["LaunchError", "launch"]

R = TypeVar("R")

# Seconds a terminated rank gets to exit before it is SIGKILLed.
_TERM_GRACE_S = 1.0
# After the first failure, how long to keep listening for others before
# choosing which one to report (a crashed rank beats its peers' consequent
# connection errors).
_FAILURE_SETTLE_S = 0.25
_PR_SET_PDEATHSIG = 1
# Before its first heartbeat a rank is starting (spawning, importing torch): the watchdog
# allows it at least this long, whatever `stall_s` is.
_STARTUP_S = 120.0
# Without an overall timeout, how long the process group waits in a collective.
_DEFAULT_COLLECTIVE_S = 1800.0


class LaunchError(RuntimeError):
    """A launched rank raised, crashed, or the launch timed out.

    ``rank`` is the failing rank (``None`` for a timeout or a launcher failure);
    ``remote_traceback`` is the rank's formatted traceback, also in the message.
    """

    def __init__(
        self,
        message: str,
        rank: int | None = None,
        remote_traceback: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        plan_error: bool = False,
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.remote_traceback = remote_traceback
        self.error_type = error_type  # the failing rank's exception: "module.QualifiedName"
        self.error_message = error_message  # its str()
        self.plan_error = plan_error  # it was a core.PlanError: bad input, not a bug

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the extra fields when the error crosses a process boundary.
        return (
            type(self),
            (str(self), self.rank, self.remote_traceback, self.error_type, self.error_message, self.plan_error),
        )


def _free_port() -> int:
    # The port is released before rank 0's TCPStore binds it; the race is
    # acceptable for a local launcher.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _choose_backend(backend: str | None, world_size: int) -> str:
    if backend is not None:
        return backend
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the launching parent dies.

    Guards against orphans when the parent is killed hard (no ``finally`` runs).
    Best effort: a no-op where prctl is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _limit_threads() -> None:
    # Several ranks share a few cores; intra-op thread pools would oversubscribe.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by earlier parallel work
        pass


def _heartbeat(beats: Any, rank: int, interval: float) -> None:
    """Write the time into this rank's slot of the shared heartbeat array, forever (a daemon
    thread): it stops only when the whole process does (SIGSTOP, a freeze, the GIL held)."""
    while True:
        beats[rank] = time.monotonic()
        time.sleep(interval)


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    parent_pid: int,
    conn: mpc.Connection,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    beats: Any = None,
    beat_interval: float = 1.0,
) -> None:
    _die_with_parent(parent_pid)
    if beats is not None:
        threading.Thread(target=_heartbeat, args=(beats, rank, beat_interval), daemon=True).start()
    _limit_threads()
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=max(timeout_s, 1.0)),
        )
        result = fn(rank, world_size, *args)
        dist.destroy_process_group()
        # Plain pickle copies tensors by value; torch's multiprocessing
        # reductions would pass shared-memory handles that die with this process.
        payload = pickle.dumps(("ok", result))
    except BaseException as err:
        # Report before any cleanup: destroying a group whose peers are blocked
        # could hang, and the parent kills this process anyway. The exception's
        # type and message travel as text (not every exception pickles).
        kind = f"{type(err).__module__}.{type(err).__qualname__}"
        conn.send_bytes(pickle.dumps(("err", (traceback.format_exc(), kind, str(err), isinstance(err, PlanError)))))
        conn.close()
        # Stay alive until killed: exiting would close this rank's sockets and
        # make blocked peers raise connection errors that race the real one.
        # Bounded, in case no parent is left to kill us (no prctl off Linux).
        time.sleep(timeout_s + 60.0)
        return
    conn.send_bytes(payload)
    conn.close()


def _reap(procs: list[SpawnProcess]) -> None:
    """Terminate, then kill, every rank still alive, and reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _TERM_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
        p.close()


def launch(
    fn: Callable[..., R],
    world_size: int,
    *args: Any,
    timeout_s: float | None = 120.0,
    backend: str | None = None,
    stall_s: float | None = None,
) -> list[R]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh processes.

    Each process joins a process group (``backend``; default gloo, or nccl with
    one GPU per rank when enough GPUs exist), calls ``fn``, destroys the group
    and sends the return value back.  ``fn`` and ``args`` must be picklable
    (``fn`` a top-level function), as must the return value.

    Returns the results in rank order.  Raises :class:`LaunchError` as soon as
    any rank raises or dies, once ``timeout_s`` (wall clock, including start-up;
    None: no limit) has passed, or, with ``stall_s``, once a rank has made no
    progress (no heartbeat) for ``stall_s`` seconds (at least ``_STARTUP_S``
    before its first); the error names the rank and its process state.  All
    ranks are killed and reaped before it returns or raises.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be an int, got {world_size!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    for name, value in (("timeout_s", timeout_s), ("stall_s", stall_s)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
        ):
            raise ValueError(f"{name} must be a finite number of seconds > 0 (or None), got {value!r}")
    # How long a collective may wait: the overall limit, or else well past the watchdog's time
    # (a stopped rank is named by the watchdog before its peers' collectives give up).
    if timeout_s is not None:
        collective_s = timeout_s
    elif stall_s is not None:
        collective_s = max(3.0 * stall_s, 60.0)
    else:
        collective_s = _DEFAULT_COLLECTIVE_S
    backend_name = _choose_backend(backend, world_size)
    ctx = mp.get_context("spawn")
    port = _free_port()
    start = time.monotonic()
    deadline = math.inf if timeout_s is None else start + timeout_s
    beats = ctx.RawArray("d", world_size) if stall_s is not None else None  # 0.0: no beat yet
    interval = 1.0 if stall_s is None else min(1.0, stall_s / 5)
    procs: list[SpawnProcess] = []
    conns: list[mpc.Connection] = []
    try:
        for rank in range(world_size):
            recv_conn, send_conn = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker,
                args=(
                    rank,
                    world_size,
                    port,
                    backend_name,
                    collective_s,
                    os.getpid(),
                    send_conn,
                    fn,
                    args,
                    beats,
                    interval,
                ),
                name=f"stagecut-launch-rank{rank}",
            )
            procs.append(proc)
            conns.append(recv_conn)
            proc.start()
            # Drop our copy of the write end so a dead rank reads as EOF.
            send_conn.close()
        watchdog = None if beats is None or stall_s is None else _Watchdog(beats, stall_s, start, procs)
        return _collect(procs, conns, deadline, timeout_s, watchdog)
    finally:
        _reap(procs)
        for c in conns:
            c.close()


class _Watchdog:
    """Which ranks have made no progress (no heartbeat) for `stall_s` seconds."""

    def __init__(self, beats: Sequence[float], stall_s: float, start: float, procs: list[SpawnProcess]) -> None:
        self.beats = beats
        self.stall_s = stall_s
        self.start = start
        self.procs = procs

    def stalled(self, pending: set[int], now: float) -> list[int]:
        out = []
        for rank in sorted(pending):
            last = self.beats[rank]
            if last == 0.0:  # still starting up
                if now - self.start > max(self.stall_s, _STARTUP_S):
                    out.append(rank)
            elif now - last > self.stall_s:
                out.append(rank)
        return out

    def error(self, ranks: list[int], now: float) -> LaunchError:
        described = []
        for rank in ranks:
            last = self.beats[rank]
            quiet = now - (last or self.start)
            state = _process_state(self.procs[rank].pid)
            described.append(f"rank {rank} (pid {self.procs[rank].pid}{state}) made no progress for {quiet:.1f}s")
        others = f"; the other ranks were waiting for it" if len(ranks) < len(self.procs) else ""
        return LaunchError(
            f"{'; '.join(described)}, longer than the watchdog's {self.stall_s:g}s{others}. "
            "All ranks were stopped.",
            rank=ranks[0],
        )


_STATES = {"T": "stopped, e.g. by SIGSTOP", "t": "stopped by a debugger", "D": "in uninterruptible I/O", "Z": "a zombie"}


def _process_state(pid: int | None) -> str:
    """`, stopped, e.g. by SIGSTOP` from /proc on Linux; empty where unknown or running."""
    if pid is None:
        return ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""
    return f", {_STATES[state]}" if state in _STATES else ""


def _collect(
    procs: list[SpawnProcess],
    conns: list[mpc.Connection],
    deadline: float,
    timeout_s: float | None,
    watchdog: _Watchdog | None = None,
) -> list[Any]:
    results: dict[int, Any] = {}
    pending = set(range(len(procs)))
    # (rank, traceback or None if the rank died without reporting), in the
    # order seen.
    failures: list[tuple[int, Any]] = []  # (rank, report or None), the report a tuple from `_worker`
    settle_until: float | None = None
    while pending:
        now = time.monotonic()
        if settle_until is not None and now >= settle_until:
            break
        if now >= deadline:
            if failures:
                break
            raise LaunchError(
                f"launch timed out after {timeout_s:g}s; "
                f"ranks {sorted(pending)} had not finished"
            )
        if watchdog is not None and not failures:
            stalled = watchdog.stalled(pending, now)
            if stalled:
                raise watchdog.error(stalled, now)
        wake = min(deadline, settle_until or deadline, now + (0.25 if watchdog is not None else 1.0))
        waitables: list[Any] = [conns[r] for r in pending]
        waitables += [procs[r].sentinel for r in pending]
        ready = mpc.wait(waitables, timeout=max(0.0, wake - now))
        for rank in sorted(pending):
            conn = conns[rank]
            if conn not in ready and procs[rank].sentinel not in ready:
                continue
            pending.discard(rank)
            status, value = _read_message(conn)
            if status == "ok":
                results[rank] = value
            else:
                failures.append((rank, value if status == "err" else None))
                if settle_until is None:
                    settle_until = time.monotonic() + _FAILURE_SETTLE_S
    if failures:
        raise _failure_error(procs, failures)
    return [results[r] for r in range(len(procs))]


def _read_message(conn: mpc.Connection) -> tuple[str, Any]:
    # A rank that exits right after sending leaves its message readable.
    if not conn.poll():
        return "dead", None
    try:
        status, value = pickle.loads(conn.recv_bytes())
    except EOFError:
        return "dead", None
    return str(status), value


def _failure_error(
    procs: list[SpawnProcess], failures: list[tuple[int, Any]]
) -> LaunchError:
    # A rank that died outright is the likelier root cause: its peers' errors
    # are typically "connection closed" consequences of its death.
    rank, tb = min(failures, key=lambda f: f[1] is not None)
    others = sorted(r for r, _ in failures if r != rank)
    also = f" (ranks {others} failed too)" if others else ""
    if tb is not None:
        text, kind, message, plan_error = tb if isinstance(tb, tuple) else (tb, None, None, False)
        return LaunchError(
            f"rank {rank} failed{also}:\n{text}", rank=rank, remote_traceback=text,
            error_type=kind, error_message=message, plan_error=plan_error,
        )
    procs[rank].join(_TERM_GRACE_S)
    return LaunchError(
        f"rank {rank} died without reporting a result "
        f"(exit code {procs[rank].exitcode}){also}",
        rank=rank,
    )
