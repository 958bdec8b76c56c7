"""The tiny Hugging Face models of adapters.hf_models: they build, run, repeat, and tie as documented."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from torch import nn

import adapters.hf_models as hf
from adapters.cli.model_source import load, parse_options
from adapters.examples import Example
from adapters.hf_models import HF_MODELS, build, build_on_meta, llama_config, make

TIED = ("gpt2", "llama", "t5", "bert", "opt")
UNTIED = ("llama-untied", "qwen2", "mistral", "mixtral")
TOKEN_INPUTS = {name: {"input_ids"} for name in HF_MODELS}
TOKEN_INPUTS["t5"] = {"input_ids", "decoder_input_ids"}
TOKEN_INPUTS["vit"] = {"pixel_values"}
# transformers' causal-LM loss (ForCausalLMLoss) upcasts the logits with `.float()`, which
# turns float64 logits into float32: these models' loss is float32 in every dtype.
FLOAT32_LOSS = ("gpt2", "llama", "llama-untied", "opt", "qwen2", "mistral", "mixtral")


def _model(example: Example) -> Any:
    """The transformers model, whose config and submodules nn.Module's types do not know."""
    return example.model


def _run(example: Example) -> Any:
    return example.model(*example.args, **example.kwargs)


def _output(example: Example) -> torch.Tensor:
    logits = _run(example).logits
    assert isinstance(logits, torch.Tensor)
    return logits


def test_names() -> None:
    assert set(TIED) | set(UNTIED) | {"vit"} == set(HF_MODELS)
    assert len(set(HF_MODELS)) == len(HF_MODELS)


@pytest.mark.parametrize("name", HF_MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward(name: str, dtype: torch.dtype) -> None:
    example = build(name, dtype=dtype, batch=3, seq=6)
    assert example.name == name and example.args == ()
    assert set(example.kwargs) == TOKEN_INPUTS[name]
    assert all(value.shape[0] == 3 for value in example.kwargs.values())
    assert {p.dtype for p in example.model.parameters()} == {dtype}
    config = _model(example).config
    assert config._attn_implementation == "eager"
    assert getattr(config, "use_cache", False) is False  # vit's config has no cache
    with torch.no_grad():
        logits = _output(example)
    assert logits.dtype == dtype
    assert logits.shape == ((3, hf.NUM_LABELS) if name == "vit" else (3, 6, hf.VOCAB))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", HF_MODELS)
def test_same_seed_same_model(name: str) -> None:
    a, b = build(name, dtype=torch.float64), build(name, dtype=torch.float64)
    for (key_a, pa), (key_b, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert key_a == key_b and torch.equal(pa, pb), key_a
    for key in a.kwargs:
        assert torch.equal(a.kwargs[key], b.kwargs[key])
    with torch.no_grad():
        assert torch.equal(_output(a), _output(b))
        assert not torch.equal(_output(a), _output(build(name, dtype=torch.float64, seed=1)))


@pytest.mark.parametrize("name", HF_MODELS)
def test_train_and_eval_agree(name: str) -> None:
    example = build(name, dtype=torch.float64)
    with torch.no_grad():
        example.model.train()
        trained = _output(example)
        example.model.eval()
        evaluated = _output(example)
    assert torch.equal(trained, evaluated)


@pytest.mark.parametrize("name", HF_MODELS)
def test_float32_and_float64_agree(name: str) -> None:
    """The same weights and inputs in both dtypes: the float64 model is the float32 one, upcast."""
    with torch.no_grad():
        low = _output(build(name, dtype=torch.float32)).double()
        high = _output(build(name, dtype=torch.float64))
    torch.testing.assert_close(low, high, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HF_MODELS)
def test_labels_give_a_scalar_loss(name: str) -> None:
    example = build(name, dtype=torch.float64, labels=True)
    assert set(example.kwargs) == TOKEN_INPUTS[name] | {"labels"}
    loss: torch.Tensor = _run(example).loss
    assert loss.dim() == 0
    assert loss.dtype == (torch.float32 if name in FLOAT32_LOSS else torch.float64)
    assert torch.isfinite(loss)
    loss.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None for p in example.model.parameters() if p.requires_grad)
    # The inputs are those of the build without labels.
    plain = build(name, dtype=torch.float64)
    assert all(torch.equal(plain.kwargs[key], example.kwargs[key]) for key in plain.kwargs)


def test_t5_decoder_reads_the_labels_shifted_right() -> None:
    example = build("t5", dtype=torch.float64, labels=True)
    labels, decoder = example.kwargs["labels"], example.kwargs["decoder_input_ids"]
    assert torch.equal(decoder[:, 1:], labels[:, :-1]) and (decoder[:, 0] == 0).all()
    with torch.no_grad():
        explicit = _run(example).loss
        shifted = example.model(input_ids=example.kwargs["input_ids"], labels=labels).loss
    assert torch.equal(explicit, shifted)


def _embeddings(model: Any) -> tuple[nn.Parameter, nn.Parameter]:
    return model.get_input_embeddings().weight, model.get_output_embeddings().weight


@pytest.mark.parametrize("name", TIED)
def test_tied_embeddings_are_one_parameter(name: str) -> None:
    model = build(name, dtype=torch.float64).model  # tying survives the move to float64
    embed, head = _embeddings(model)
    assert embed is head
    assert sum(1 for p in model.parameters() if p is embed) == 1  # counted once
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is embed]
    assert len(names) >= 2, names


@pytest.mark.parametrize("name", UNTIED)
def test_untied_embeddings_are_separate(name: str) -> None:
    model = build(name).model
    embed, head = _embeddings(model)
    assert embed is not head
    assert embed.untyped_storage().data_ptr() != head.untyped_storage().data_ptr()
    assert not torch.equal(embed, head)


def test_mixtral_routes_each_token_to_its_experts() -> None:
    model = _model(build("mixtral"))
    moe = model.model.layers[0].mlp
    assert moe.experts.num_experts == hf.EXPERTS and moe.top_k == hf.EXPERTS_PER_TOKEN
    assert model.config._experts_implementation == "batched_mm"
    assert model.config.router_jitter_noise == 0.0


def test_build_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    build("llama")
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "gpt3"}, "unknown Hugging Face model 'gpt3'"),
        ({"name": "llama", "batch": 1}, "batch=1"),
        ({"name": "llama", "n_layers": 0}, "n_layers=0"),
        ({"name": "llama", "dtype": torch.int64}, "floating-point"),
        ({"name": "llama", "attn_implementation": "flash"}, "attn_implementation='flash'"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(**options)


def test_missing_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(ImportError, match=r"transformers is not installed: pip install 'stagecut\[hf\]'") as info:
        build("gpt2")
    assert isinstance(info.value, hf.TransformersMissingError)
    with pytest.raises(hf.TransformersMissingError):
        llama_config("7b")


def test_llama_configs() -> None:
    small, large = llama_config("7b"), llama_config("70b")
    assert (small.num_hidden_layers, small.hidden_size, small.intermediate_size) == (32, 4096, 11008)
    assert (small.num_attention_heads, small.num_key_value_heads, small.vocab_size) == (32, 32, 32000)
    assert (large.num_hidden_layers, large.hidden_size, large.intermediate_size) == (80, 8192, 28672)
    assert (large.num_attention_heads, large.num_key_value_heads, large.vocab_size) == (64, 8, 32000)
    assert small.tie_word_embeddings is False and large.tie_word_embeddings is False
    with pytest.raises(ValueError, match="'13b'"):
        llama_config("13b")


def test_7b_on_meta_allocates_nothing() -> None:
    example = build_on_meta(llama_config("7b"))
    model = example.model
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == pytest.approx(6.74e9, rel=0.005)  # 6,738,415,616
    tensors = [*model.parameters(), *model.buffers(), *example.kwargs.values()]
    assert {t.device.type for t in tensors} == {"meta"}
    assert example.kwargs["input_ids"].shape == (2, 128)
    with torch.no_grad():
        logits = _output(example)  # shapes only
    assert logits.shape == (2, 128, 32000) and logits.device.type == "meta"


def test_factory() -> None:
    example = make("qwen2", n_layers=3)
    assert example.name == "qwen2" and len(_model(example).model.layers) == 3
    source = load("adapters.hf_models:make", parse_options(["name=llama-untied", "dtype=torch.float64", "seq=5"]))
    assert type(source.model).__name__ == "LlamaForCausalLM"
    assert source.kwargs["input_ids"].shape == (2, 5)
    assert {p.dtype for p in source.model.parameters()} == {torch.float64}
    meta = load("adapters.hf_models:make", parse_options(["name=llama-7b"]))
    assert meta.kwargs["input_ids"].shape == (2, 128) and meta.kwargs["input_ids"].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", HF_MODELS)
def test_cuda_matches_cpu(name: str) -> None:
    on_cpu, on_gpu = build(name, dtype=torch.float64), build(name, dtype=torch.float64, device="cuda")
    assert {p.device.type for p in on_gpu.model.parameters()} == {"cuda"}
    assert {v.device.type for v in on_gpu.kwargs.values()} == {"cuda"}
    with torch.no_grad():
        torch.testing.assert_close(_output(on_gpu).cpu(), _output(on_cpu))
