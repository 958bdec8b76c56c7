"""`adapters.fx.snapshot`: trace by need, value info, state left alone, JSON round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import fx, nn

import core
from adapters.fx import run_stages, snapshot, stage_modules
from core import Cut, CutInsideLeaf, EmptyStage, Plan, Snapshot
from tests.test_fx_support import (
    NAMES,
    check_staged_run,
    cut_points,
    example,
    one_thread,  # noqa: F401  (an autouse fixture: one intra-op thread here)
    traced,
)

REPO = Path(__file__).resolve().parent.parent


def _traced_paths(snap: Snapshot) -> set[str]:
    return {path for path, module in snap.modules.items() if module.graph is not None}


# -- trace by need ----------------------------------------------------------------------------

BY_NEED = [
    ("gpt", ["blocks.1"], {""}),
    ("gpt", ["blocks.1.attn", "blocks.2"], {"", "blocks.1"}),
    ("gpt", [Cut("blocks.0.attn.proj", "before"), "blocks.3.mlp"], {"", "blocks.0", "blocks.0.attn", "blocks.3"}),
    ("t5", ["encoder.block.0", "decoder.block.0.cross_attn"], {"", "encoder", "decoder", "decoder.block.0"}),
    ("t5", ["encoder"], {""}),
    ("structured", ["blocks.0.linear", Cut("blocks.2", "before")], {"", "blocks.0"}),
    ("slapo_seq", ["layers.0"], {"", "layers"}),
    ("slapo_list", ["layers.0.linear"], {"", "layers.0"}),
    ("scalars", ["blocks.0.linear", "blocks.2"], {"", "blocks.0"}),
]


@pytest.mark.parametrize("name, cuts, spine", BY_NEED)
def test_trace_by_need_traces_only_the_spine_and_plans_the_same(
    name: str, cuts: list[Any], spine: set[str]
) -> None:
    ex = example(name)
    visited: list[str] = []
    snap = snapshot(ex.model, *ex.args, cuts=cuts, progress=visited.append, **ex.kwargs)
    assert _traced_paths(snap) == spine
    assert sorted(visited) == sorted(p or "<root>" for p in spine)
    off_spine = [m for m in snap.modules.values() if m.graph is None and m.leaf_reason is not None]
    assert any("snapshot(cuts=...)" in m.leaf_reason for m in off_spine if m.leaf_reason)
    by_need, full = core.plan(snap, cuts), core.plan(traced(name), cuts)
    assert [s.modules for s in by_need.stages] == [s.modules for s in full.stages]
    assert [s.inputs for s in by_need.stages] == [s.inputs for s in full.stages]
    assert by_need == full  # the same graphs, value info, parameters, figures and ties
    check_staged_run(by_need, ex)


@pytest.mark.parametrize("name", ["slapo_seq", "slapo_list"])
def test_trace_by_need_still_explains_an_untraceable_module(name: str) -> None:
    ex = example(name)
    snap = snapshot(ex.model, *ex.args, cuts=["pre.linear"], **ex.kwargs)
    reason = snap.modules["pre"].leaf_reason
    assert reason is not None and "fx could not trace" in reason
    with pytest.raises(CutInsideLeaf, match="fx could not trace"):
        core.plan(snap, ["pre.linear"])


def test_trace_by_need_without_example_inputs() -> None:
    ex = example("gpt")
    snap = snapshot(ex.model, cuts=["blocks.1.mlp"])
    assert _traced_paths(snap) == {"", "blocks.1"}
    plan = core.plan(snap, ["blocks.1.mlp"])
    assert all(s.figures.bytes_in is None for s in plan.stages)
    check_staged_run(plan, ex)


# -- value info -------------------------------------------------------------------------------


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.values[n.name] = result = super().run_node(n)
        return result


def _check_info(info: core.ValueInfo | None, value: Any, where: str) -> None:
    assert info is not None, where
    if isinstance(value, torch.Tensor):
        assert info.kind == "tensor", where
        assert info.shape == tuple(value.shape), where
        assert info.dtype == str(value.dtype).removeprefix("torch."), where
        assert info.nbytes == value.numel() * value.element_size(), where
    elif value is None:
        assert info.kind == "none", where
    elif isinstance(value, (bool, int, float)):
        assert info.kind == "scalar", where
    elif isinstance(value, tuple):
        assert info.kind == "tuple" and info.shape == (len(value),), where
    elif isinstance(value, dict):
        assert info.kind == "dict" and info.shape == (len(value),), where


@pytest.mark.parametrize("name", NAMES)
def test_every_node_of_every_traced_graph_has_info(name: str) -> None:
    snap = traced(name)
    assert _traced_paths(snap)
    for module in snap.modules.values():
        if module.graph is not None:
            for node in module.graph.nodes:
                assert node.info is not None, (module.path, node.name)


@pytest.mark.parametrize("name", NAMES)
def test_root_info_matches_a_real_run(name: str) -> None:
    snap, ex = traced(name), example(name)
    root = snap.root.graph
    assert root is not None
    (whole,) = stage_modules(core.plan(snap, []), ex.model)  # the root graph, node names kept
    recorder = _Recorder(whole)
    with torch.no_grad():
        recorder.run(*ex.args, *ex.kwargs.values())
    for node in root.nodes:
        if node.op != "output":
            assert node.name in recorder.values, node.name
            _check_info(node.info, recorder.values[node.name], node.name)


@pytest.mark.parametrize("name", ["gpt", "t5", "structured", "scalars"])
def test_submodule_outputs_info_matches_a_real_run(name: str) -> None:
    snap, ex = traced(name), example(name)
    outputs: dict[str, Any] = {}
    handles = [
        module.register_forward_hook(lambda _m, _a, out, path=path: outputs.setdefault(path, out))
        for path, module in ex.model.named_modules()
        if path in snap.modules and snap.modules[path].graph is not None
    ]
    try:
        with torch.no_grad():
            ex.model(*ex.args, **ex.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    for path, out in outputs.items():
        graph = snap.modules[path].graph
        assert graph is not None
        _check_info(graph.output.info, out, path)


def test_gpt_stage_bytes_are_known() -> None:
    snap, ex = traced("gpt"), example("gpt")
    plan = core.plan(snap, ["blocks.0", "blocks.2.attn"])
    for stage in plan.stages:
        assert stage.figures.bytes_in is not None and stage.figures.bytes_out is not None
    idx = ex.args[0]
    assert plan.stages[0].figures.bytes_in == idx.numel() * idx.element_size()
    with torch.no_grad():
        logits = ex.model(idx)
    assert plan.stages[-1].figures.bytes_out == logits.numel() * logits.element_size()
    hidden = idx.numel() * 32 * 8  # (batch, seq, d_model) in float64
    assert plan.stages[1].figures.bytes_in == hidden


def test_scalar_info_for_sizes() -> None:
    snap = traced("scalars")
    for path in ("", "blocks.0"):
        graph = snap.modules[path].graph
        assert graph is not None
        sizes = [n for n in graph.nodes if n.op == "call_method" and n.target == "size"]
        assert sizes and all(n.info is not None and n.info.kind == "scalar" for n in sizes)


@pytest.mark.parametrize("name", ["slapo_seq", "slapo_list"])
def test_data_dependent_leaf_still_gets_info(name: str) -> None:
    snap, ex = traced(name), example(name)
    root = snap.root.graph
    assert root is not None
    (pre,) = [n for n in root.nodes if n.op == "call_module" and n.target == "pre"]
    with torch.no_grad():
        real = ex.model.get_submodule("pre")(*ex.args)
    _check_info(pre.info, real, "pre")


# -- the model is left as it was --------------------------------------------------------------


class _DataDependentNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.bn(x)
        return y if y.sum() > 0 else -y


class _NormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(self.linear(x))
        return out


class _Stateful(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = _DataDependentNorm()
        self.blocks = nn.Sequential(_NormBlock(), _NormBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.blocks(self.pre(x))
        return out


def test_snapshot_leaves_buffers_alone() -> None:
    torch.manual_seed(0)
    model = _Stateful()  # training mode: BatchNorm updates its statistics on every call
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snap = snapshot(model, torch.randn(3, 4) + 1.0)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert snap.modules["pre"].leaf_reason is not None


def test_received_names_that_clash_as_identifiers_stay_apart() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(4, 4)
            self.proj = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = self.qkv(x)
            return self.proj(q), q

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_qkv = nn.Linear(4, 4)  # its node is "attn_qkv"; attn's inlined one "attn.qkv"
            self.attn = Inner()
            self.last = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = self.attn_qkv(x)
            a = self.attn(x)
            out: torch.Tensor = self.last(a[0] + a[1] + b)
            return out

    torch.manual_seed(0)
    model, x = Outer().double(), torch.randn(2, 4, dtype=torch.float64)
    plan = core.plan(snapshot(model, x), ["attn.proj"])
    assert {"attn_qkv", "attn.qkv"} <= set(plan.stages[1].inputs)
    modules = stage_modules(plan, model)
    with torch.no_grad():
        assert torch.equal(run_stages(modules, x), model(x))


# -- JSON -------------------------------------------------------------------------------------


def _some_cut_sets(snap: Snapshot) -> list[list[Cut]]:
    points = cut_points(snap)
    candidates = [
        [],
        [Cut(points[0])],
        [Cut(points[1], "before")],
        [Cut(points[-2])],
        [Cut(p) for p in points[::4][:3]],
        [Cut(points[-1], "before"), Cut(points[len(points) // 2])],
    ]
    out = []
    for cuts in candidates:
        try:
            core.plan(snap, cuts)
        except EmptyStage:
            continue
        out.append(cuts)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trips_plan_the_same_and_run(name: str) -> None:
    snap, ex = traced(name), example(name)
    again = Snapshot.from_json(snap.to_json())
    assert again == snap
    cut_sets = _some_cut_sets(snap)
    assert len(cut_sets) >= 3
    for cuts in cut_sets:
        plan = core.plan(snap, cuts)
        assert core.plan(again, cuts) == plan
        loaded = Plan.from_json(plan.to_json())
        assert loaded == plan
        check_staged_run(loaded, ex)


# -- typing -----------------------------------------------------------------------------------


def test_adapters_pass_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "adapters"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- leaf memo: identical blocks reuse one fake run, different ones never do ------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("by_need", [False, True])
def test_memoized_value_info_equals_running_every_leaf(name: str, by_need: bool) -> None:
    from unittest import mock

    import adapters.graph.memo as memo

    ex = example(name)
    cuts: list[Any] | None = [] if by_need else None  # [] by need: every root child is a leaf
    with mock.patch.object(memo.LeafMemo, "key", lambda self, module, args, kwargs: None):
        plain = snapshot(ex.model, *ex.args, cuts=cuts, **ex.kwargs)
    assert snapshot(ex.model, *ex.args, cuts=cuts, **ex.kwargs) == plain


class _Repeat(nn.Module):
    def __init__(self, times: int, by: torch.Tensor | None = None) -> None:
        super().__init__()
        self.times = times
        self.by = by  # a plain tensor attribute: counts by identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x.repeat(1, self.times if self.by is None else int(self.by.shape[0]))
        return out


class _Repeats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _Repeat(1), _Repeat(2), _Repeat(2)
        self.d, self.e = _Repeat(1, torch.zeros(3)), _Repeat(1, torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(self.b(self.a(x)))
        out: torch.Tensor = self.e(self.d(x))
        return out


def test_memo_tells_apart_blocks_that_differ_in_attributes() -> None:
    snap = snapshot(_Repeats(), torch.zeros(2, 3), cuts=[])
    root = snap.root.graph
    assert root is not None
    shapes = {n.name: n.info.shape for n in root.nodes if n.op == "call_module" and n.info}
    assert shapes == {"a": (2, 3), "b": (2, 6), "c": (2, 12), "d": (2, 36), "e": (2, 72)}


def test_memo_respects_forward_hooks() -> None:
    model = _Repeats()
    model.b.register_forward_hook(lambda _m, _a, out: out[:, :1])
    snap = snapshot(model, torch.zeros(2, 3), cuts=[])
    root = snap.root.graph
    assert root is not None
    shapes = {n.name: n.info.shape for n in root.nodes if n.op == "call_module" and n.info}
    assert shapes == {"a": (2, 3), "b": (2, 1), "c": (2, 2), "d": (2, 6), "e": (2, 12)}


# -- calling conventions: *args, keyword-only parameters, **kwargs at the root ----------------


class _Varargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, *rest: torch.Tensor, scale: float = 1.0, **extra: Any) -> torch.Tensor:
        y = self.a(x) * scale + rest[0]
        out: torch.Tensor = self.b(y) + extra["bias"]
        return out


class _HfStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        y = self.a(x) * mask + kwargs["bias"]
        out: torch.Tensor = self.b(y)
        return out


def test_varargs_and_keyword_only_root_parameters() -> None:
    import inspect

    torch.manual_seed(0)
    model = _Varargs().double()
    x, r, bias = (torch.randn(2, 4, dtype=torch.float64) for _ in range(3))
    snap = snapshot(model, x, r, scale=2.0, bias=bias)
    root = snap.root.graph
    assert root is not None
    info = {n.target: n.info for n in root.placeholders}
    assert info["x"] is not None and info["x"].kind == "tensor"
    assert info["*rest"] == core.ValueInfo("tuple", (1,), nbytes=64)
    assert info["scale"] == core.ValueInfo("scalar", nbytes=8)
    assert info["**extra"] == core.ValueInfo("dict", (1,), nbytes=64)
    plan = core.plan(snap, ["a"])
    modules = stage_modules(plan, model)
    assert inspect.signature(modules[0].forward).parameters.keys() == inspect.signature(model.forward).parameters.keys()
    with torch.no_grad():
        assert torch.equal(run_stages(modules, x, r, scale=2.0, bias=bias), model(x, r, scale=2.0, bias=bias))
        assert torch.equal(run_stages(modules, x, r, bias=bias), model(x, r, bias=bias))


def test_var_keyword_root_parameter() -> None:
    torch.manual_seed(0)
    model = _HfStyle().double()
    x, mask, bias = (torch.randn(2, 4, dtype=torch.float64) for _ in range(3))
    snap = snapshot(model, x, mask=mask, bias=bias)
    root = snap.root.graph
    assert root is not None
    assert all(n.info is not None for n in root.nodes)
    plan = core.plan(snap, ["a"])
    modules = stage_modules(plan, model)
    with torch.no_grad():
        assert torch.equal(run_stages(modules, x, mask=mask, bias=bias), model(x, mask=mask, bias=bias))
