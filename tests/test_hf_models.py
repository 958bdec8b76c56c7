"""Real models through the export frontend: ten transformers models, built from tiny configs
with random weights, snapshotted by `adapters.fx.snapshot` (tracer "auto" picks export), cut,
and run as stage modules against the unsplit model in float64.

Cuts between blocks keep every module the stage calls whole: forward and gradients are
`torch.equal`. Cuts inside a block inline its code as ATen ops: within 1e-12.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from adapters import hf_models  # noqa: E402
from adapters.examples import Example  # noqa: E402
from adapters.fx import UntraceableModel  # noqa: E402
from adapters.export.sizes import SpecializedSize  # noqa: E402
from adapters.fx import run_stages, snapshot, stage_modules  # noqa: E402
from core import Snapshot, balance, plan  # noqa: E402
from core.costs import params as by_params  # noqa: E402

# model -> (cuts between blocks, cuts inside blocks), 4 layers each.
CUTS: dict[str, tuple[list[str], list[str]]] = {
    "gpt2": (["transformer.h.0", "transformer.h.2"], ["transformer.h.1.attn", "before:transformer.h.2.mlp.act"]),
    "llama": (["model.layers.1"], ["model.layers.1.self_attn", "before:model.layers.2.mlp.down_proj"]),
    "llama-untied": (["model.layers.0", "model.layers.2"], ["model.layers.2.input_layernorm"]),
    "t5": (["encoder.block.1", "decoder.block.0"], ["encoder.block.2.layer.0", "decoder.block.1.layer.1"]),
    "bert": (["bert.encoder.layer.1"], ["bert.encoder.layer.1.attention", "bert.encoder.layer.2.output"]),
    "opt": (["model.decoder.layers.1"], ["model.decoder.layers.1.self_attn"]),
    "qwen2": (["model.layers.1", "model.layers.2"], ["model.layers.1.mlp"]),
    "mistral": (["model.layers.2"], ["model.layers.0.self_attn"]),
    "mixtral": (["model.layers.1"], ["model.layers.1.mlp", "before:model.layers.2.mlp"]),
    "vit": (["vit.layers.1"], ["vit.layers.2.attention"]),
}
TIED = {"gpt2", "llama", "t5", "bert", "opt"}


@functools.cache
def example(name: str) -> Example:
    return hf_models.build(name, n_layers=4, dtype=torch.float64)


@functools.cache
def default_snapshot(name: str) -> Snapshot:
    ex = example(name)
    return snapshot(ex.model, *ex.args, **ex.kwargs)


def _tensors(output: Any) -> dict[str, torch.Tensor]:
    items = output.items() if isinstance(output, dict) else [("output", output)]
    return {k: v for k, v in items if isinstance(v, torch.Tensor)}


def _grads(model: nn.Module, run: Any) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    out = _tensors(run())
    gen = torch.Generator().manual_seed(7)
    sum(
        (v * torch.randn(v.shape, generator=gen, dtype=v.dtype)).sum()
        for k, v in sorted(out.items())
        if v.is_floating_point()
    ).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def _check(name: str, cuts: list[str], exact: bool) -> None:
    ex = example(name)
    snap = snapshot(ex.model, *ex.args, cuts=cuts, **ex.kwargs)
    assert snap.tracer == "export"
    staged = plan(snap, cuts)
    assert len(staged.stages) == len(cuts) + 1
    modules = stage_modules(staged, ex.model)
    # The stages hold the model's own parameter objects.
    own = {id(p) for p in ex.model.parameters()}
    assert all(id(p) in own for m in modules for p in m.parameters())
    with torch.no_grad():
        expected = _tensors(ex.model(*ex.args, **ex.kwargs))
        actual = _tensors(run_stages(modules, *ex.args, **ex.kwargs))
    assert expected.keys() == actual.keys()
    for key in expected:
        if exact:
            assert torch.equal(actual[key], expected[key]), key
        else:
            torch.testing.assert_close(actual[key], expected[key], atol=1e-12, rtol=0)
    plain = _grads(ex.model, lambda: ex.model(*ex.args, **ex.kwargs))
    piped = _grads(ex.model, lambda: run_stages(modules, *ex.args, **ex.kwargs))
    assert plain.keys() == piped.keys()
    for pname, g in plain.items():
        other = piped[pname]
        assert (g is None) == (other is None), pname
        if g is not None and other is not None:
            if exact:
                assert torch.equal(other, g), pname
            else:
                torch.testing.assert_close(other, g, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", hf_models.HF_MODELS)
def test_cuts_between_blocks_equal_the_model_exactly(name: str) -> None:
    _check(name, CUTS[name][0], exact=True)


@pytest.mark.parametrize("name", hf_models.HF_MODELS)
def test_cuts_inside_blocks_equal_the_model_within_rounding(name: str) -> None:
    _check(name, CUTS[name][1], exact=False)


@pytest.mark.parametrize("name", hf_models.HF_MODELS)
def test_ties_and_balance(name: str) -> None:
    snap = default_snapshot(name)
    assert snap.tracer == "export"
    for stages in (2, 4):
        cuts = balance(snap, stages, cost=by_params)
        result = plan(snap, cuts)
        assert len(result.stages) == stages
    # The tie between the input embedding and the head spans the first and the last stage.
    staged = plan(snap, balance(snap, 2, cost=by_params))
    spans = [{stage for _, stage in group} for group in staged.ties]
    if name in TIED:
        assert any(span == {0, 1} for span in spans), staged.ties
    else:
        assert staged.ties == ()


def test_stages_run_at_other_batch_sizes_and_refuse_a_fixed_size() -> None:
    ex = example("llama")
    cuts = ["model.layers.1"]
    modules = stage_modules(plan(snapshot(ex.model, *ex.args, cuts=cuts, **ex.kwargs), cuts), ex.model)
    ids = ex.kwargs["input_ids"]
    for batch in (1, 3, 5):
        more = ids.repeat(3, 1)[:batch]
        with torch.no_grad():
            assert torch.equal(run_stages(modules, input_ids=more).logits, ex.model(input_ids=more).logits)
    with pytest.raises(SpecializedSize, match="input_ids"):
        run_stages(modules, input_ids=ids[:, :4])  # export fixed the sequence length


def test_opaque_blocks_are_not_traced() -> None:
    """Without cuts, export traces the way to the blocks; the blocks stay single calls."""
    snap = default_snapshot("mixtral")
    assert snap.modules["model"].graph is not None
    for i in range(4):
        block = snap.modules[f"model.layers.{i}"]
        assert block.graph is None and block.leaf_reason


def test_meta_device_model_plans_without_weights() -> None:
    config = hf_models.llama_config("7b")
    config.num_hidden_layers = 4  # a 7B-wide model, 4 layers: planned with no memory for weights
    ex = hf_models.build_on_meta(config)
    assert all(p.device.type == "meta" for p in ex.model.parameters())
    snap = snapshot(ex.model, *ex.args, **ex.kwargs)
    cuts = balance(snap, 4, cost=by_params)
    result = plan(snap, cuts)
    assert len(result.stages) == 4
    per_layer = 4096 * 4096 * 4 + 3 * 4096 * 11008 + 2 * 4096  # attention, MLP, norms
    middle = [s.figures.params for s in result.stages[1:-1]]
    assert all(p == per_layer for p in middle), middle


class _BranchesOnData(nn.Module):
    """The root branches on a tensor's value: neither fx nor export can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = h * 2
        return self.b(h)


def test_untraceable_root_names_module_reason_and_fix() -> None:
    model = _BranchesOnData()
    with pytest.raises(UntraceableModel) as info:
        snapshot(model, torch.randn(2, 4), cuts=["a"])
    text = str(info.value)
    assert "the root module" in text and "test_hf_models.py:" in text
    assert "leaf" in text


@pytest.mark.parametrize("name", hf_models.HF_MODELS)
def test_cli_plans_and_inspects_each_model(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from adapters.cli import main

    model = ["--model", "adapters.hf_models:make", "-o", f"name={name}", "-o", "n_layers=4"]
    assert main(["plan", *model, "--stages", "2"]) == 0
    table = capsys.readouterr().out
    assert "stage" in table and "params" in table
    rows = [line for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) >= 2, table
    assert main(["inspect", *model]) == 0
    tree = capsys.readouterr().out
    assert "traced" in tree, tree


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_BranchesOnData(), _BranchesOnData()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_export_names_the_inner_module_that_failed() -> None:
    from adapters.export.capture import CaptureError

    with pytest.raises(CaptureError) as info:
        snapshot(_Stack(), torch.randn(2, 4), cuts=["layers.0.a"], tracer="export")
    text = str(info.value)
    assert text.startswith("torch.export could not trace layers.0:") and "test_hf_models.py:" in text
