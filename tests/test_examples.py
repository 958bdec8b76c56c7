from __future__ import annotations

import inspect
import operator
from typing import Any

import pytest
import torch
import torch.fx as fx
from torch import nn

from adapters.examples import (
    EXAMPLES,
    GPT,
    T5,
    DataDependentPre,
    Example,
    Scalars,
    SlapoList,
    SlapoSeq,
    Structured,
    build,
)

NAMES = sorted(EXAMPLES)


class ShallowTracer(fx.Tracer):
    """Treats every submodule call as a leaf, so one level of the hierarchy is traced."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _run(ex: Example) -> Any:
    return ex.model(*ex.args, **ex.kwargs)


def _has_own_forward(module: nn.Module) -> bool:
    """Modules written here, plus nn.Sequential; torch's own layers are leaves everywhere."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return False
    return isinstance(module, nn.Sequential) or not type(module).__module__.startswith("torch.")


def _record_first_calls(model: nn.Module) -> dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]]:
    """Hooks every module; the returned dict fills with (args, kwargs, output) of its first call."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {}
    for name, module in model.named_modules():

        def hook(_: nn.Module, args: Any, kwargs: Any, output: Any, name: str = name) -> None:
            calls.setdefault(name, (args, kwargs, output))

        module.register_forward_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_finite_and_backward_reaches_every_parameter(name: str) -> None:
    ex = build(name)
    assert ex.name == name and ex.description
    outputs = [t for t in _tensors(_run(ex)) if t.is_floating_point()]
    assert outputs
    for t in outputs:
        assert torch.isfinite(t).all()
    torch.autograd.backward(torch.stack([t.sum() for t in outputs]).sum())
    for pname, param in ex.model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model_and_inputs(name: str) -> None:
    a, b, other = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    sa, sb, so = a.model.state_dict(), b.model.state_dict(), other.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], so[k]) for k in sa)
    for x, y in zip(_tensors((a.args, a.kwargs)), _tensors((b.args, b.kwargs))):
        assert torch.equal(x, y)


def test_building_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("gpt")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", NAMES)
def test_float64_option(name: str) -> None:
    ex = build(name, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in ex.model.parameters())
    floats = [t for t in _tensors(_run(ex)) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats)


@pytest.mark.parametrize("name", NAMES)
def test_every_level_traces_and_matches_eager(name: str) -> None:
    ex = build(name, dtype=torch.float64)
    calls = _record_first_calls(ex.model)
    _run(ex)
    traced = 0
    for qualname, module in ex.model.named_modules():
        if not _has_own_forward(module):
            continue
        if isinstance(module, DataDependentPre):
            with pytest.raises(fx.proxy.TraceError):
                ShallowTracer().trace(module)
            continue
        graph = ShallowTracer().trace(module)
        args, kwargs, expected = calls[qualname]
        actual = fx.GraphModule(module, graph)(*args, **kwargs)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        traced += 1
    assert traced >= 2


def _root_graph(ex: Example) -> fx.Graph:
    return ShallowTracer().trace(ex.model)


def _called_modules(graph: fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_module"]


def test_gpt_ties_lm_head_to_token_embedding() -> None:
    model = build("gpt").model
    assert isinstance(model, GPT)
    assert model.lm_head.weight is model.tok_emb.weight
    called = _called_modules(_root_graph(build("gpt", n_layers=3)))
    assert called == ["tok_emb", "pos_emb", "blocks.0", "blocks.1", "blocks.2", "ln_f", "lm_head"]


def test_t5_deep_stacks_share_the_encoder_output() -> None:
    ex = build("t5", n_layers=24, d_model=8)
    model = ex.model
    assert isinstance(model, T5)
    names = dict(ex.model.named_modules())
    assert "encoder.block.23" in names and "decoder.block.23" in names
    assert "encoder.final_layer_norm" in names and "decoder.final_layer_norm" in names
    logits = _run(ex)
    assert logits.shape == (*ex.args[1].shape, model.lm_head.out_features)

    assert _called_modules(_root_graph(ex)) == ["shared", "encoder", "shared", "decoder", "lm_head"]
    decoder_graph = ShallowTracer().trace(model.decoder)
    encoder_out = next(n for n in decoder_graph.nodes if n.target == "encoder_out")
    readers = sorted(str(u.target) for u in encoder_out.users)
    assert readers == sorted(f"block.{i}" for i in range(24))


def test_structured_reads_tuple_and_dict_items_and_echoes_none() -> None:
    ex = build("structured")
    assert ex.args[-1] is None
    assert set(ex.kwargs) == {"shift", "temperature"}
    out = _run(ex)
    assert out["context"] is None

    graph = _root_graph(ex)
    getitem_keys = {n.args[1] for n in graph.nodes if n.target is operator.getitem}
    assert {0, 1, "hidden", "skip"} <= getitem_keys
    placeholders = [n.target for n in graph.nodes if n.op == "placeholder"]
    assert placeholders == ["x", "context", "shift", "temperature"]
    (output,) = [n for n in graph.nodes if n.op == "output"]
    context = next(n for n in graph.nodes if n.target == "context")
    assert output.args[0]["context"] is context
    assert isinstance(ex.model, Structured) and len(ex.model.blocks) >= 4


def test_scalars_pass_an_int_and_a_zero_dim_tensor() -> None:
    ex = build("scalars")
    model = ex.model
    assert isinstance(model, Scalars) and len(model.blocks) >= 3
    hidden, width, norm = model.blocks[0](*ex.args)
    assert isinstance(width, int) and width == hidden.size(-1)
    assert isinstance(norm, torch.Tensor) and norm.dim() == 0

    graph = _root_graph(ex)
    assert any(n.op == "call_method" and n.target == "size" for n in graph.nodes)
    getitems = [n for n in graph.nodes if n.target is operator.getitem]
    assert {n.args[1] for n in getitems} >= {0, 1, 2}
    measure_graph = ShallowTracer().trace(model.blocks[0])
    assert any(n.op == "call_method" and n.target == "size" for n in measure_graph.nodes)


@pytest.mark.parametrize("name, container", [("slapo_seq", nn.Sequential), ("slapo_list", nn.ModuleList)])
def test_slapo_shapes(name: str, container: type[nn.Module]) -> None:
    ex = build(name)
    model = ex.model
    assert isinstance(model, (SlapoSeq, SlapoList))
    assert isinstance(model.pre, DataDependentPre)
    assert len(model.layers) == 2 and type(model.layers) is container
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(ex.model)
    called = _called_modules(_root_graph(ex))
    expected_layers = ["layers"] if container is nn.Sequential else ["layers.0", "layers.1"]
    assert called == ["pre", *expected_layers, "post"]


def test_factories_take_only_defaulted_keyword_options() -> None:
    for name, factory in EXAMPLES.items():
        params = inspect.signature(factory).parameters
        assert {"dtype", "seed"} <= params.keys(), name
        for p in params.values():
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
            assert p.default is not inspect.Parameter.empty, (name, p.name)


def test_unknown_name_raises_value_error_listing_names() -> None:
    with pytest.raises(ValueError, match="gpt") as info:
        build("nope")
    for name in EXAMPLES:
        assert name in str(info.value)


def test_sizes_and_counts_below_one_are_refused() -> None:
    from adapters.examples import build

    for options in ({"n_layers": -1}, {"n_layers": 0}, {"batch": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            build("gpt", **options)
