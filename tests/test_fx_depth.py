"""The fx frontend on module trees thousands of levels deep (issue 13): snapshot, plan, stage
modules and running them, equal to the model; no recursion limit in the way, time linear in
the depth (bench/depth.py --fx measures it). The core alone at depth 5000 is
tests/test_hardening_depth.py."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from torch import nn

from adapters.fx import run_stages, snapshot, stage_modules
from adapters.graph.deep import ModelTooDeep, run_deep
from adapters.graph.module_tree import named_tensors, tree_depth, walk_modules
from core import plan


class Level(nn.Module):
    """One level of the chain: calls the next and adds one."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.m = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x) + 1


class Bottom(nn.Module):
    def __init__(self, width: int = 8, blocks: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def chain(depth: int) -> tuple[nn.Module, str]:
    """`m` inside `m` ... `depth` levels, four Linear blocks at the bottom; built bottom up. Returns
    the model and a cut after the deepest block 1, whose spine is every level."""
    torch.manual_seed(0)
    model: nn.Module = Bottom()
    for _ in range(depth):
        model = Level(model)
    return model, ".".join(["m"] * depth + ["blocks", "1"])


def _plan_and_run(depth: int, *example: torch.Tensor) -> None:
    model, cut = chain(depth)
    x = torch.randn(2, 8)
    snap = snapshot(model, *example, cuts=[cut], tracer="fx")
    assert snap.tracer == "fx" and len(snap.modules) == depth + 6
    assert snap.modules[cut.rsplit(".", 2)[0]].graph is not None  # every level traced
    if example:
        assert snap.root.graph is not None
        assert snap.root.graph.nodes[-2].info is not None and snap.root.graph.nodes[-2].info.shape == (2, 8)
    result = plan(snap, [cut])
    assert len(result.stages) == 2
    assert sum(1 for n in result.stages[1].graph.nodes if n.target == "_operator.add") == depth
    stages = stage_modules(result, model)
    with torch.no_grad():
        # Plain PyTorch needs the room too: the model's forward recurses once per level.
        expected = run_deep(depth, lambda: model(x))
        assert torch.equal(run_stages(stages, x), expected)
    # The stages share the model's parameters (torch's own `parameters()` recurses once per level).
    ours = {id(p) for stage in stages for _, p in named_tensors(stage, "_parameters")}
    assert ours == {id(p) for _, p in named_tensors(model, "_parameters")}


def test_a_chain_2000_levels_deep_snapshots_plans_and_runs_as_the_model() -> None:
    limit, start = sys.getrecursionlimit(), time.process_time()
    _plan_and_run(2000)
    assert time.process_time() - start < 120  # linear: a few ms a level (bench/depth.py --fx)
    assert sys.getrecursionlimit() == limit  # put back


def test_a_chain_past_the_recursion_limit_gets_value_info() -> None:
    # Deeper than Python's default recursion limit allows the model's forward to go (about 250
    # levels): the binding run and the value info run in a thread with room for it.
    _plan_and_run(400, torch.randn(2, 8))


def test_walks_are_torchs_without_recursion() -> None:
    model, _ = chain(3)
    shared = nn.Linear(2, 2)
    model.a = shared
    model.b = shared
    assert list(walk_modules(model)) == list(model.named_modules())
    assert list(walk_modules(model, remove_duplicate=False)) == list(model.named_modules(remove_duplicate=False))
    assert list(named_tensors(model, "_parameters")) == list(model.named_parameters(remove_duplicate=False))
    assert tree_depth(model) == 5 and tree_depth(shared) == 0
    deep, _ = chain(20_000)
    assert tree_depth(deep) == 20_002
    assert sum(1 for _ in walk_modules(deep)) == 20_006


def test_a_module_that_contains_itself_is_refused() -> None:
    model, _ = chain(2)
    model.m.m.loop = model  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="contains itself"):
        list(walk_modules(model, remove_duplicate=False))


def test_recursing_without_end_is_a_typed_error() -> None:
    def forever(n: int) -> int:
        return forever(n + 1)

    with pytest.raises(ModelTooDeep, match="300 levels deep"):
        run_deep(300, lambda: forever(0))
    with pytest.raises(ModelTooDeep):
        run_deep(3, lambda: forever(0))
    limit = sys.getrecursionlimit()
    assert run_deep(5000, lambda: sys.getrecursionlimit()) > limit
    assert sys.getrecursionlimit() == limit
    with torch.no_grad():
        assert run_deep(5000, torch.is_grad_enabled) is False
