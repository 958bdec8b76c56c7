"""Issue 10's gaps, each with the unsplit model as the reference in float64: the forward, every
gradient and every buffer `torch.equal`, on the fx frontend and, where it applies, export."""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn

from adapters.export.sizes import SpecializedSize
from adapters.fx import run_stages, snapshot, stage_modules
from adapters.graph.guards import ModeMismatch
from adapters.graph.hooks import DroppedHookWarning
from core import plan

TRACERS = ["fx", "export"]


def _grads(model: nn.Module, run: Any) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    out = run()
    (out if out.dim() == 0 else out.square().sum()).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def _same_run(model: nn.Module, cuts: list[str], tracer: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Stages equal the model: output, gradients and buffers, after one call each."""
    snap = snapshot(model, *args, cuts=cuts, tracer=tracer, **kwargs)
    assert snap.tracer == tracer
    modules = stage_modules(plan(snap, cuts), model)
    start = {n: b.clone() for n, b in model.named_buffers()}
    plain = _grads(model, lambda: model(*args, **kwargs))
    after_model = {n: b.clone() for n, b in model.named_buffers()}
    for name, buffer in model.named_buffers():
        buffer.copy_(start[name])
    staged = _grads(model, lambda: run_stages(modules, *args, **kwargs))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, after_model[name]), name
    assert plain.keys() == staged.keys()
    for name, g in plain.items():
        assert (g is None and staged[name] is None) or torch.equal(g, staged[name]), name  # type: ignore[arg-type]
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(start[name])
        assert torch.equal(run_stages(modules, *args, **kwargs), model(*args, **kwargs))
    return modules


# -- 1. binding the example call ----------------------------------------------------------------


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.a(x)
        if scale is not None:
            h = h * scale
        return self.b(h)


class _T5Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.o = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if position_bias is None:
            position_bias = torch.ones_like(x)
        return self.o(self.q(x) + position_bias), position_bias


class _T5Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_T5Layer() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None
        for layer in self.layers:
            x, bias = layer(x, position_bias=bias)
        return x


class _WithLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.head(self.body(x))
        if labels is None:
            return logits
        return nn.functional.mse_loss(logits, labels)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_default_the_caller_did_not_pass_is_fixed(tracer: str) -> None:
    torch.manual_seed(0)
    model = _Scaled().double()
    modules = _same_run(model, ["a"], tracer, _x())
    with pytest.raises((AssertionError, TypeError, SpecializedSize), match="scale"):
        run_stages(modules, _x(), torch.tensor(2.0, dtype=torch.float64))


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_none_inside_a_traced_module_is_fixed(tracer: str) -> None:
    torch.manual_seed(0)
    _same_run(_T5Stack().double(), ["layers.0", "layers.1.q"], tracer, _x())


@pytest.mark.parametrize("tracer", TRACERS)
def test_labels_none_in_a_loss_wrapper(tracer: str) -> None:
    torch.manual_seed(0)
    _same_run(_WithLoss().double(), ["body"], tracer, _x())


def test_a_different_non_tensor_value_names_the_argument() -> None:
    torch.manual_seed(0)
    model = _WithLoss().double()
    modules = stage_modules(plan(snapshot(model, _x(), cuts=["body"], tracer="fx"), ["body"]), model)
    with pytest.raises(AssertionError, match="labels"):
        run_stages(modules, _x(), labels=_x())


@pytest.mark.parametrize("tracer", TRACERS)
def test_example_arguments_the_model_does_not_take_are_a_type_error(tracer: str) -> None:
    with pytest.raises(TypeError):
        snapshot(_Scaled().double(), _x(), None, _x(), tracer=tracer)
    with pytest.raises(TypeError):
        snapshot(_Scaled().double(), _x(), nope=1, tracer=tracer)


# -- 2. hooks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tracer", TRACERS)
def test_hooks_run_as_often_as_in_one_model_call(tracer: str) -> None:
    torch.manual_seed(0)
    model = _Scaled().double()
    calls: Counter[str] = Counter()
    model.register_forward_pre_hook(lambda m, args: calls.update(["pre"]) or (args[0] * 1.5,))
    model.register_forward_hook(lambda m, args, out: calls.update(["forward"]) or out + 1)
    model.register_full_backward_hook(lambda m, gi, go: calls.update(["backward"]))
    model.b.register_forward_hook(lambda m, args, out: calls.update(["leaf"]))
    x = _x().requires_grad_()
    modules = stage_modules(plan(snapshot(model, x, cuts=["a"], tracer=tracer), ["a"]), model)
    # The root's hooks move to the stages; a snapshot never runs them (leaf hooks may run on
    # fake tensors: they shape the leaf's result).
    assert calls["pre"] == calls["forward"] == calls["backward"] == 0
    calls.clear()
    expected = model(x)
    expected.sum().backward()
    counted = Counter(calls)
    calls.clear()
    actual = run_stages(modules, x)
    actual.sum().backward()
    assert torch.equal(actual, expected)
    assert calls == counted == Counter({"pre": 1, "forward": 1, "backward": 1, "leaf": 1})


def test_a_hook_of_an_inlined_module_is_reported() -> None:
    model = _T5Stack().double()
    model.layers[1].register_forward_hook(lambda m, a, o: None)
    snap = snapshot(model, _x(), cuts=["layers.1.q"], tracer="fx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage_modules(plan(snap, ["layers.1.q"]), model)
    dropped = [w for w in caught if issubclass(w.category, DroppedHookWarning)]
    assert len(dropped) == 1 and "layers.1" in str(dropped[0].message)


# -- 4. no side effects ---------------------------------------------------------------------------


class _Counts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.step.add_(1)
        return self.b(self.norm(self.a(x)))


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()},
        "classes": {n: type(m) for n, m in model.named_modules()},
        "forwards": {n: "forward" in m.__dict__ for n, m in model.named_modules()},
        "rng": torch.random.get_rng_state(),
    }


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "rng":
            assert torch.equal(a[key], b[key])
        elif key == "params":
            assert a[key].keys() == b[key].keys()
            for name, (value, grad) in a[key].items():
                assert torch.equal(value, b[key][name][0]) and grad == b[key][name][1], name
        elif key == "buffers":
            assert all(torch.equal(v, b[key][n]) for n, v in a[key].items())
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("tracer", TRACERS)
def test_snapshot_leaves_the_model_as_it_found_it(tracer: str) -> None:
    torch.manual_seed(0)
    model = _Counts().double()
    model.b.weight.requires_grad_(False)
    model.a.register_forward_hook(lambda m, a, o: None)
    before = copy.deepcopy(_state(model))
    snapshot(model, _x(), cuts=["norm"], tracer=tracer)
    _assert_same_state(before, _state(model))


@pytest.mark.parametrize("tracer", TRACERS)
def test_in_place_buffer_updates_happen_in_the_staged_run(tracer: str) -> None:
    torch.manual_seed(0)
    _same_run(_Counts().double(), ["a"], tracer, _x())


# -- 5. mode ------------------------------------------------------------------------------------


class _ModeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.training:
            h = h * 2
        return self.b(h)


@pytest.mark.parametrize("tracer", TRACERS)
def test_stages_refuse_the_other_mode_when_the_graph_baked_it_in(tracer: str) -> None:
    torch.manual_seed(0)
    model = _ModeBranch().double()
    modules = _same_run(model, ["a"], tracer, _x())
    model.eval()
    with pytest.raises(ModeMismatch, match="the root module is in eval mode"):
        run_stages(modules, _x())
    model.train()
    with torch.no_grad():
        assert torch.equal(run_stages(modules, _x()), model(_x()))


def test_leaves_follow_the_mode_and_mode_free_graphs_are_not_guarded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4)).double()
    snap = snapshot(model, _x(), cuts=["0"], tracer="fx")
    assert not any("check_mode" in n.target for n in snap.root.graph.nodes)  # type: ignore[union-attr]
    modules = stage_modules(plan(snap, ["0"]), model)
    model.eval()  # the dropout leaf is the model's own: the stages follow
    with torch.no_grad():
        assert torch.equal(run_stages(modules, _x()), model(_x()))


# -- 3. per-call cuts ------------------------------------------------------------------------------


class _Group(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.l(x)) + x


class _Albert(nn.Module):
    """One shared layer group called four times (ALBERT)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.group, self.head = nn.Linear(4, 4), _Group(), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for _ in range(4):
            h = self.group(h)
        return self.head(h)


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_shared_group_is_cut_between_its_calls(tracer: str) -> None:
    from core import Cut, Plan

    torch.manual_seed(0)
    model = _Albert().double()
    cuts: list[Any] = ["group#1", Cut("group", "after", call=2)]
    _same_run(model, cuts, tracer, _x())
    staged = plan(snapshot(model, _x(), cuts=cuts, tracer=tracer), cuts)
    assert len(staged.stages) == 3
    assert [s.modules.count("group") for s in staged.stages] == [2, 1, 1]
    groups = {frozenset(stage for _, stage in group) for group in staged.ties}
    assert groups == {frozenset({0, 1, 2})}  # the shared weights are a tie group
    assert Plan.from_json(staged.to_json()).cuts == (Cut("group", "after", 1), Cut("group", "after", 2))
    assert [str(c) for c in staged.cuts] == ["after:group#1", "after:group#2"]


def test_a_bare_path_at_a_shared_group_lists_its_calls() -> None:
    from core import CalledMoreThanOnce, CutError

    snap = snapshot(_Albert().double(), _x(), tracer="fx")
    with pytest.raises(CalledMoreThanOnce, match=r"called 4 times.*group#0, group#1, group#2, group#3"):
        plan(snap, ["group"])
    with pytest.raises(CutError, match="#0 to #3"):
        plan(snap, ["group#4"])
