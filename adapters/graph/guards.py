"""Checks a stage runs before computing, for what a traced graph fixed at snapshot time.

A traced module whose code reads `self.training` has the branch of the snapshot's mode baked
into its graph. Its graph starts with a `check_mode(path, expected)` node: stage modules bind
it to the model (`ModeCheck`), so a stage run after `model.train()`/`model.eval()` switched
that module's mode fails naming it, never computing silently with the other mode's code.
"""

from __future__ import annotations

from torch import nn

from core import PlanError

MODE_CHECK = "adapters.graph.guards.check_mode"


class ModeMismatch(PlanError):
    """A stage ran with a module in the other mode than the one its graph was traced in."""


def check_mode(path: str, expected: bool) -> None:
    """The node's target as named in graphs. It checks nothing by itself (interpreting a
    snapshot's graph has no model to ask); `stage_modules` replaces it with a `ModeCheck`."""


class ModeCheck:
    """`check_mode` bound to a model: the stage modules' version of the node."""

    __name__ = "check_mode"
    __qualname__ = "check_mode"
    __module__ = "adapters.graph.guards"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, path: str, expected: bool) -> None:
        module = self.model.get_submodule(path)
        if module.training != expected:
            now, then = ("train", "eval") if module.training else ("eval", "train")
            raise ModeMismatch(
                f"{path or 'the root module'} is in {now} mode, but its code was traced in {then} "
                f"mode and reads self.training; call model.{then}() before running the stages, or "
                "snapshot again in this mode."
            )
