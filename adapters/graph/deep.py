"""Room on the stack for code that recurses once per level of a deep module tree.

stagecut's own walks are iterative, but two things must recurse as deep as the model: the
model's own forward (a module calls its child, which calls its child...), which a snapshot runs
once on fake tensors, and Python's compiler on the code fx generates for a stage (an attribute
chain `self.m.m.m...` per call of a deep module). Python's default recursion limit (1000
frames) stops them near depth 250 and the main thread's 8 MiB C stack near a few thousand.

`run_deep(levels, fn)` runs `fn()` where it fits: in this thread when the tree is shallow,
otherwise in a worker thread with a C stack and a recursion limit sized to `levels`, both put
back afterwards. Grad mode goes with it. If the code still recurses past that (the model recurses
more per level than allowed for, or by itself), `ModelTooDeep` says so instead of a
RecursionError.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from core import PlanError

T = TypeVar("T")

SHALLOW = 100  # levels that always fit in the caller's thread
FRAMES_PER_LEVEL = 50  # Python frames allowed for each level (a module call takes 3-4)
STACK_PER_LEVEL = 100 << 10  # bytes of C stack for each level (about 2 KiB per frame)
STACK_BASE = 64 << 20  # for what runs at the bottom (torch's dispatch, fake tensors)
STACK_MAX = 4 << 30

_lock = threading.Lock()
_raised = 0  # worker threads running with the raised recursion limit
_saved_limit = 0


class ModelTooDeep(PlanError):
    """Code that must recurse once per level of the module tree (the model's own forward, or
    Python compiling a stage) recursed deeper than stagecut made room for."""


def run_deep(levels: int, fn: Callable[[], T], *, what: str = "the model") -> T:
    """`fn()`, with room to recurse `levels` levels deep (see the module doc)."""
    if levels <= SHALLOW:
        return _checked(fn, levels, what)
    frames = FRAMES_PER_LEVEL * levels + 10_000
    stack = min(STACK_BASE + STACK_PER_LEVEL * levels, STACK_MAX)
    grad = torch.is_grad_enabled()
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.set_grad_enabled(grad):
                result.append(_checked(fn, levels, what))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            failure.append(err)

    global _raised, _saved_limit
    with _lock:
        if _raised == 0:
            _saved_limit = sys.getrecursionlimit()
        _raised += 1
        sys.setrecursionlimit(max(frames, sys.getrecursionlimit()))
        old_stack = threading.stack_size()
        threading.stack_size(stack)
        try:
            worker = threading.Thread(target=work, name="stagecut-deep", daemon=True)
            worker.start()
        except BaseException:
            _raised -= 1
            if _raised == 0:
                sys.setrecursionlimit(_saved_limit)
            raise
        finally:
            threading.stack_size(old_stack)
    try:
        worker.join()
    finally:
        with _lock:
            _raised -= 1
            if _raised == 0:
                sys.setrecursionlimit(_saved_limit)
    if failure:
        raise failure[0]
    return result[0]


def _checked(fn: Callable[[], T], levels: int, what: str) -> T:
    try:
        return fn()
    except RecursionError as err:
        raise ModelTooDeep(
            f"{what} recursed deeper than stagecut allows for a module tree {levels} levels deep "
            f"({sys.getrecursionlimit()} frames): {err}. Its forward recurses more than "
            f"{FRAMES_PER_LEVEL} frames per level, or without end; plain PyTorch cannot run it either."
        ) from err


__all__ = ["ModelTooDeep", "run_deep"]
