"""Tiny random-weight Hugging Face `transformers` models, built from configs in code.

Nothing is downloaded: every model is constructed from a config written here and
initialised from a seed, so the same arguments give the same weights and inputs.

    from adapters.hf_models import HF_MODELS, build
    example = build("llama", n_layers=4)
    out = example.model(*example.args, **example.kwargs)   # out.logits: (2, 8, 128)

The inputs are keyword arguments, the way a user calls the model (``input_ids=...``;
``input_ids`` and ``decoder_input_ids`` for t5; ``pixel_values`` for vit), with a
batch of at least 2. Every dropout probability is 0 and ``use_cache`` is off, so
``train()`` and ``eval()`` compute the same thing.

Attention is ``"eager"`` unless ``attn_implementation="sdpa"``: plain matmul and
softmax, which every model here supports, deterministic on the CPU in float32 and
float64 and free of the fused CUDA kernels whose backward is not. transformers
computes some steps in float32 whatever the dtype: the eager attention softmax of the
llama family, opt and vit; the llama family's RMSNorm and rotary angles and Mixtral's
router (with either attention); and the causal-LM loss (its logits are upcast with
``.float()``, so a float64 causal LM returns a float32 loss). Float64 results repeat
exactly, but carry float32 rounding (~1e-7 relative) from those steps.
Mixtral's experts are ``"batched_mm"``: a gather of each token's expert weights and a
batched matmul, with no shape that depends on the routing. (``"eager"`` loops over the
experts a batch hits; the default ``"grouped_mm"`` rejects float64 on the CPU.)

`llama_config("7b" | "70b")` and `build_on_meta(config)` give full-size models on the
meta device, for planning without memory. `make` is the command-line factory:

    stagecut plan --model adapters.hf_models:make -o name=llama -o n_layers=4

``transformers`` is imported only when a model is built; without it these raise
`TransformersMissingError` (an `ImportError`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from adapters.examples import Example

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig

__all__ = [
    "HF_MODELS",
    "META_MODELS",
    "TransformersMissingError",
    "build",
    "build_on_meta",
    "llama_config",
    "make",
]

HF_MODELS: tuple[str, ...] = (
    "gpt2",
    "llama",
    "llama-untied",
    "t5",
    "bert",
    "opt",
    "qwen2",
    "mistral",
    "mixtral",
    "vit",
)
# Full-size configs that `make` builds on the meta device (see `llama_config`).
META_MODELS: tuple[str, ...] = ("llama-7b", "llama-70b")

# The small dimensions every tiny model shares.
VOCAB = 128
HIDDEN = 32
HEADS = 4
KV_HEADS = 2  # grouped-query attention where the architecture has it (llama, qwen2, mistral, mixtral)
INTERMEDIATE = 64
MAX_POSITIONS = 512
EXPERTS = 4  # mixtral
EXPERTS_PER_TOKEN = 2
IMAGE_SIZE = 16  # vit: 16x16 pixels in 4x4 patches, 16 patches and a [CLS] token
PATCH_SIZE = 4
CHANNELS = 3
NUM_LABELS = 4  # vit classes
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
EXPERTS_IMPLEMENTATION = "batched_mm"


class TransformersMissingError(ImportError):
    """`transformers` is needed to build these models and is not installed."""


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise TransformersMissingError(
            "transformers is not installed: pip install 'stagecut[hf]' (or pip install 'transformers>=5.0')"
        ) from err


# ---------------------------------------------------------------------------
# configs and models


def _causal_common(n_layers: int) -> dict[str, Any]:
    """The fields the llama-family configs (llama, qwen2, mistral, mixtral) share."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=n_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        attention_dropout=0.0,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _gpt2(n_layers: int, attn: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=MAX_POSITIONS,
        n_embd=HIDDEN,
        n_layer=n_layers,
        n_head=HEADS,
        n_inner=INTERMEDIATE,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        use_cache=False,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(_attention(config, attn))
    # Its class name matches no loss in transformers' table, which warns and then uses this one.
    model.loss_type = "ForCausalLM"
    return model


def _llama(n_layers: int, attn: str, *, tied: bool) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**_causal_common(n_layers), tie_word_embeddings=tied)
    return LlamaForCausalLM(_attention(config, attn))


def _t5(n_layers: int, attn: str) -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=VOCAB,
        d_model=HIDDEN,
        d_kv=HIDDEN // HEADS,
        d_ff=INTERMEDIATE,
        num_layers=n_layers,
        num_decoder_layers=n_layers,
        num_heads=HEADS,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        classifier_dropout=0.0,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    # Not a declared field of T5Config; T5 shifts `labels` right from it when no
    # `decoder_input_ids` are given. T5 starts decoding from the pad token.
    setattr(config, "decoder_start_token_id", 0)
    return T5ForConditionalGeneration(_attention(config, attn))


def _bert(n_layers: int, attn: str) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=n_layers,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        max_position_embeddings=MAX_POSITIONS,
        use_cache=False,
        pad_token_id=0,
    )
    return BertForMaskedLM(_attention(config, attn))


def _opt(n_layers: int, attn: str) -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=n_layers,
        ffn_dim=INTERMEDIATE,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        word_embed_proj_dim=HIDDEN,
        dropout=0.0,
        attention_dropout=0.0,
        layerdrop=0.0,
        use_cache=False,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    return OPTForCausalLM(_attention(config, attn))


def _qwen2(n_layers: int, attn: str) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**_causal_common(n_layers), tie_word_embeddings=False, use_sliding_window=False)
    return Qwen2ForCausalLM(_attention(config, attn))


def _mistral(n_layers: int, attn: str) -> nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    # A window wider than any sequence built here: the mask is the plain causal one.
    config = MistralConfig(**_causal_common(n_layers), tie_word_embeddings=False, sliding_window=MAX_POSITIONS)
    return MistralForCausalLM(_attention(config, attn))


def _mixtral(n_layers: int, attn: str) -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        **_causal_common(n_layers),
        tie_word_embeddings=False,
        sliding_window=None,
        num_local_experts=EXPERTS,
        num_experts_per_tok=EXPERTS_PER_TOKEN,
        router_jitter_noise=0.0,  # noise multiplies the router input in training mode only
        output_router_logits=False,  # so the loss is the language-model loss alone
    )
    config._experts_implementation = EXPERTS_IMPLEMENTATION
    return MixtralForCausalLM(_attention(config, attn))


def _vit(n_layers: int, attn: str) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=n_layers,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=CHANNELS,
        id2label={i: f"class{i}" for i in range(NUM_LABELS)},  # NUM_LABELS classes
    )
    return ViTForImageClassification(_attention(config, attn))


def _attention(config: PretrainedConfig, attn: str) -> Any:
    config._attn_implementation = attn
    return config


# ---------------------------------------------------------------------------
# inputs


def _ids(generator: torch.Generator, batch: int, seq: int) -> Tensor:
    # From 3: the ids below are the special tokens (pad, bos, eos) of these configs.
    return torch.randint(3, VOCAB, (batch, seq), generator=generator)


def _token_inputs(generator: torch.Generator, batch: int, seq: int, dtype: torch.dtype, labels: bool) -> dict[str, Any]:
    ids = _ids(generator, batch, seq)
    inputs: dict[str, Any] = {"input_ids": ids}
    if labels:
        inputs["labels"] = ids.clone()  # causal LMs shift the labels themselves
    return inputs


def _t5_inputs(generator: torch.Generator, batch: int, seq: int, dtype: torch.dtype, labels: bool) -> dict[str, Any]:
    source = _ids(generator, batch, seq)
    target = _ids(generator, batch, seq)
    # Teacher forcing: the decoder reads the target shifted right behind the start token (0).
    decoder_input_ids = torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], dim=1)
    inputs: dict[str, Any] = {"input_ids": source, "decoder_input_ids": decoder_input_ids}
    if labels:
        inputs["labels"] = target
    return inputs


def _bert_inputs(generator: torch.Generator, batch: int, seq: int, dtype: torch.dtype, labels: bool) -> dict[str, Any]:
    ids = _ids(generator, batch, seq)
    inputs: dict[str, Any] = {"input_ids": ids}
    if labels:
        inputs["labels"] = _ids(generator, batch, seq)  # a prediction at every position
    return inputs


def _vit_inputs(generator: torch.Generator, batch: int, seq: int, dtype: torch.dtype, labels: bool) -> dict[str, Any]:
    # Drawn in float32 whatever the dtype, so that every dtype sees the same images.
    pixels = torch.randn((batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=generator).to(dtype)
    inputs: dict[str, Any] = {"pixel_values": pixels}
    if labels:
        inputs["labels"] = torch.randint(0, NUM_LABELS, (batch,), generator=generator)
    return inputs


_Inputs = Callable[[torch.Generator, int, int, torch.dtype, bool], dict[str, Any]]

_MODELS: dict[str, tuple[Callable[[int, str], nn.Module], _Inputs, str]] = {
    "gpt2": (_gpt2, _token_inputs, "GPT2LMHeadModel, tied embeddings"),
    "llama": (lambda n, attn: _llama(n, attn, tied=True), _token_inputs, "LlamaForCausalLM, tied embeddings, grouped-query attention"),
    "llama-untied": (lambda n, attn: _llama(n, attn, tied=False), _token_inputs, "LlamaForCausalLM, untied lm head"),
    "t5": (_t5, _t5_inputs, "T5ForConditionalGeneration, encoder-decoder, tied embeddings"),
    "bert": (_bert, _bert_inputs, "BertForMaskedLM, tied decoder"),
    "opt": (_opt, _token_inputs, "OPTForCausalLM, tied embeddings, learned positions"),
    "qwen2": (_qwen2, _token_inputs, "Qwen2ForCausalLM, qkv bias, untied"),
    "mistral": (_mistral, _token_inputs, "MistralForCausalLM, sliding-window attention, untied"),
    "mixtral": (_mixtral, _token_inputs, f"MixtralForCausalLM, {EXPERTS} experts, top-{EXPERTS_PER_TOKEN} routing"),
    "vit": (_vit, _vit_inputs, f"ViTForImageClassification, {IMAGE_SIZE}x{IMAGE_SIZE} images, {NUM_LABELS} classes"),
}
assert tuple(_MODELS) == HF_MODELS


def build(
    name: str,
    *,
    n_layers: int = 2,
    batch: int = 2,
    seq: int = 8,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device | None = None,
    labels: bool = False,
    attn_implementation: str = "eager",
) -> Example:
    """A tiny `name` model (one of `HF_MODELS`) with random weights from `seed`, and its inputs.

    The weights are initialised on the CPU (the same on every device), then moved to
    `dtype` and `device`. The inputs are `Example.kwargs`; `Example.args` is empty.
    `seq` is the token count (vit ignores it: its images are 16 patches and [CLS]).
    With `labels`, the inputs include `labels` and the model's output has a scalar `loss`.
    `attn_implementation` is "eager" (the default: plain matmul and softmax) or "sdpa".
    """
    entry = _MODELS.get(name)
    if entry is None:
        raise ValueError(f"unknown Hugging Face model {name!r}; expected one of {', '.join(HF_MODELS)}")
    if n_layers < 1:
        raise ValueError(f"n_layers={n_layers}: expected at least 1")
    if batch < 2:
        raise ValueError(f"batch={batch}: expected at least 2, so the batch dimension is not 1")
    if not 1 <= seq <= MAX_POSITIONS:
        raise ValueError(f"seq={seq}: expected 1 to {MAX_POSITIONS}")
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r}: expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype}: expected a floating-point dtype")
    make_model, make_inputs, description = entry
    _require_transformers()
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG as it was
        torch.manual_seed(seed)
        model = make_model(n_layers, attn_implementation)
    model = model.to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    kwargs = make_inputs(generator, batch, seq, dtype, labels)
    if device is not None:
        kwargs = {key: value.to(device) for key, value in kwargs.items()}
    return Example(
        name=name,
        model=model,
        args=(),
        kwargs=kwargs,
        description=f"{description}; {n_layers} layers, hidden {HIDDEN}, {HEADS} heads, vocab {VOCAB} (random weights)",
    )


# ---------------------------------------------------------------------------
# full-size configs on the meta device

# Llama 2 7B and 70B (vocab 32000, context 4096):
# layers, hidden, intermediate, attention heads, key-value heads.
_LLAMA_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "7b": (32, 4096, 11008, 32, 32),
    "70b": (80, 8192, 28672, 64, 8),
}


def llama_config(size: str) -> LlamaConfig:
    """The config of a Llama 2 model of `size` ("7b" or "70b"), for `build_on_meta`."""
    dims = _LLAMA_SIZES.get(size)
    if dims is None:
        raise ValueError(f"unknown llama size {size!r}; expected one of {', '.join(_LLAMA_SIZES)}")
    _require_transformers()
    from transformers import LlamaConfig

    layers, hidden, intermediate, heads, kv_heads = dims
    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = "eager"
    return config


def build_on_meta(config: PretrainedConfig, *, batch: int = 2, seq: int = 128, attention_mask: bool = True) -> Example:
    """`AutoModelForCausalLM.from_config(config)` on the meta device, with meta inputs.

    No memory is allocated for weights, buffers or inputs: shapes and dtypes only, for
    planning. The inputs are `input_ids` (batch, seq) and, unless `attention_mask` is
    False, an `attention_mask` of the same shape, as a tokenizer returns them. The mask
    lets a forward on plain meta tensors run: without one, transformers looks for packed
    sequences in the position ids with a data-dependent `.all()`, which meta tensors
    cannot answer (fake tensors, which it recognises as tracing, can do without).
    """
    _require_transformers()
    from transformers import AutoModelForCausalLM

    # `from_config` is an unannotated classmethod in transformers.
    from_config = cast("Callable[[PretrainedConfig], nn.Module]", AutoModelForCausalLM.from_config)
    with torch.device("meta"):
        model = from_config(config)
    input_ids = torch.zeros((batch, seq), dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    if attention_mask:
        kwargs["attention_mask"] = torch.ones((batch, seq), dtype=torch.long, device="meta")
    n_params = sum(p.numel() for p in model.parameters())
    return Example(
        name=f"{config.model_type}-meta",
        model=model,
        args=(),
        kwargs=kwargs,
        description=f"{type(model).__name__} on the meta device, {n_params / 1e9:.2f}B parameters",
    )


# ---------------------------------------------------------------------------
# the command-line factory


def make(
    name: str = "llama",
    *,
    n_layers: int = 2,
    batch: int = 2,
    seq: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | None = None,
    labels: bool = False,
    attn_implementation: str = "eager",
) -> Example:
    """A tiny Hugging Face model (`-o name=` one of HF_MODELS), or llama-7b / llama-70b on the meta device.

    `seq` defaults to 8 tokens for the tiny models and 128 for the meta ones; the meta ones
    take only `batch` and `seq` (their layer count and dtype are the real model's).
    """
    if name in META_MODELS:
        return build_on_meta(llama_config(name.removeprefix("llama-")), batch=batch, seq=128 if seq is None else seq)
    return build(
        name, n_layers=n_layers, batch=batch, seq=8 if seq is None else seq, dtype=dtype, seed=seed, device=device, labels=labels,
        attn_implementation=attn_implementation,
    )
