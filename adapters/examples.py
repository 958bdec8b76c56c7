"""A zoo of small, deterministic example models for exercising stage cutting.

Every module here except ``DataDependentPre`` traces with ``torch.fx`` when its
submodule calls are treated as leaves, so each level of the hierarchy can be
cut on its own. Models are built on the CPU from a seed; nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EXAMPLES", "Example", "build", "check_options"]


@dataclass(frozen=True)
class Example:
    name: str
    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    description: str


# ---------------------------------------------------------------------------
# shared pieces


def _check_heads(d_model: int, n_heads: int) -> None:
    if n_heads <= 0 or d_model % n_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")


def _split_heads(x: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """(batch, seq, d_model) -> (batch, heads, seq, head_dim)."""
    return x.view(x.size(0), x.size(1), n_heads, head_dim).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, seq, head_dim) -> (batch, seq, d_model)."""
    x = x.transpose(1, 2).contiguous()
    return x.view(x.size(0), x.size(1), x.size(2) * x.size(3))


def _attend(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if causal:  # a Python bool fixed at construction, not a tensor value
        # ones_like instead of torch.ones(t, t): factory functions reject fx Proxies as sizes.
        keep = torch.ones_like(scores, dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.act(self.fc(x)))
        return x


def _build(
    name: str,
    description: str,
    make_model: Callable[[], nn.Module],
    make_inputs: Callable[[torch.Generator, torch.dtype], tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    dtype: torch.dtype,
    seed: int,
) -> Example:
    # fork_rng keeps the caller's global RNG untouched while init stays seeded.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model()
    model = model.to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    args, kwargs = make_inputs(generator, dtype)
    return Example(name=name, model=model, args=args, kwargs=kwargs, description=description)


# ---------------------------------------------------------------------------
# gpt: decoder-only transformer with tied embeddings


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        _check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x).chunk(3, dim=-1)
        q = _split_heads(qkv[0], self.n_heads, self.head_dim)
        k = _split_heads(qkv[1], self.n_heads, self.head_dim)
        v = _split_heads(qkv[2], self.n_heads, self.head_dim)
        y: Tensor = self.proj(_merge_heads(_attend(q, k, v, causal=True)))
        return y


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, 4 * d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    def __init__(
        self, *, vocab_size: int, max_seq: int, d_model: int, n_heads: int, n_layers: int
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        # Tied weights: one parameter used by the first and the last stage.
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for blk in self.blocks:
            x = blk(x)
        logits: Tensor = self.lm_head(self.ln_f(x))
        return logits


def gpt(
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    vocab_size: int = 64,
    max_seq: int = 16,
    d_model: int = 32,
    n_heads: int = 4,
    n_layers: int = 4,
    batch: int = 2,
    seq: int = 8,
) -> Example:
    if seq > max_seq:
        raise ValueError(f"seq={seq} exceeds max_seq={max_seq}")

    def inputs(gen: torch.Generator, _: torch.dtype) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.randint(0, vocab_size, (batch, seq), generator=gen),), {}

    return _build(
        "gpt",
        "GPT-like pre-norm decoder; lm_head.weight is tok_emb.weight (tied).",
        lambda: GPT(
            vocab_size=vocab_size,
            max_seq=max_seq,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=n_layers,
        ),
        inputs,
        dtype=dtype,
        seed=seed,
    )


# ---------------------------------------------------------------------------
# t5: encoder-decoder; the encoder output feeds every decoder block


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, *, causal: bool) -> None:
        super().__init__()
        _check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.causal = causal
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        q = _split_heads(self.q(x), self.n_heads, self.head_dim)
        k = _split_heads(self.k(x), self.n_heads, self.head_dim)
        v = _split_heads(self.v(x), self.n_heads, self.head_dim)
        y: Tensor = self.o(_merge_heads(_attend(q, k, v, causal=self.causal)))
        return y


class CrossAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        _check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        q = _split_heads(self.q(x), self.n_heads, self.head_dim)
        k = _split_heads(self.k(memory), self.n_heads, self.head_dim)
        v = _split_heads(self.v(memory), self.n_heads, self.head_dim)
        y: Tensor = self.o(_merge_heads(_attend(q, k, v, causal=False)))
        return y


class EncoderBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads, causal=False)
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = MLP(d_model, 4 * d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.ln_self(x))
        x = x + self.ff(self.ln_ff(x))
        return x


class DecoderBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads, causal=True)
        self.ln_cross = nn.LayerNorm(d_model)
        self.cross_attn = CrossAttention(d_model, n_heads)
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = MLP(d_model, 4 * d_model)

    def forward(self, x: Tensor, enc_out: Tensor) -> Tensor:
        x = x + self.self_attn(self.ln_self(x))
        x = x + self.cross_attn(self.ln_cross(x), enc_out)
        x = x + self.ff(self.ln_ff(x))
        return x


class Stack(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(EncoderBlock(d_model, n_heads) for _ in range(n_layers))
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, hidden: Tensor) -> Tensor:
        for blk in self.block:
            hidden = blk(hidden)
        hidden = self.final_layer_norm(hidden)
        return hidden


class DecoderStack(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(DecoderBlock(d_model, n_heads) for _ in range(n_layers))
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, hidden: Tensor, encoder_out: Tensor) -> Tensor:
        for blk in self.block:
            hidden = blk(hidden, encoder_out)
        hidden = self.final_layer_norm(hidden)
        return hidden


class T5(nn.Module):
    def __init__(self, *, vocab_size: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.shared = nn.Embedding(vocab_size, d_model)
        self.encoder = Stack(d_model, n_heads, n_layers)
        self.decoder = DecoderStack(d_model, n_heads, n_layers)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor) -> Tensor:
        encoder_out = self.encoder(self.shared(input_ids))
        hidden = self.decoder(self.shared(decoder_input_ids), encoder_out)
        logits: Tensor = self.lm_head(hidden)
        return logits


def t5(
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    vocab_size: int = 64,
    d_model: int = 32,
    n_heads: int = 4,
    n_layers: int = 2,
    batch: int = 2,
    src_seq: int = 10,
    tgt_seq: int = 8,
) -> Example:
    def inputs(gen: torch.Generator, _: torch.dtype) -> tuple[tuple[Any, ...], dict[str, Any]]:
        src = torch.randint(0, vocab_size, (batch, src_seq), generator=gen)
        tgt = torch.randint(0, vocab_size, (batch, tgt_seq), generator=gen)
        return (src, tgt), {}

    return _build(
        "t5",
        "T5-like encoder-decoder; every decoder block cross-attends to the encoder output.",
        lambda: T5(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers),
        inputs,
        dtype=dtype,
        seed=seed,
    )


# ---------------------------------------------------------------------------
# structured: tuple / dict block outputs, root kwargs, a None input


class TupleBlock(nn.Module):
    """Returns ``(hidden, aux)``; callers read the items with ``out[0]``, ``out[1]``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.linear(x)
        return torch.relu(h), h.mean(dim=-1, keepdim=True)


class DictBlock(nn.Module):
    """Returns ``{"hidden": ..., "skip": ...}``; callers read it by key."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"hidden": self.norm(torch.tanh(self.linear(x))), "skip": x}


class AuxBlock(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, aux: Tensor) -> Tensor:
        x = x + self.linear(x) * torch.sigmoid(aux)
        return x


class SkipBlock(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return torch.relu(self.linear(x)) + skip


class Structured(nn.Module):
    def __init__(self, *, d_in: int, d_model: int, d_out: int) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        self.blocks = nn.ModuleList(
            [TupleBlock(d_model), DictBlock(d_model), AuxBlock(d_model), SkipBlock(d_model)]
        )
        self.head = nn.Linear(d_model, d_out)

    # Keyword-only inputs need defaults: fx drops the ``*`` when it generates code,
    # so a required one after ``context=None`` would not compile.
    def forward(
        self,
        x: Tensor,
        context: Any = None,
        *,
        shift: Tensor | float = 0.0,
        temperature: float = 1.0,
    ) -> dict[str, Any]:
        h = self.embed(x)
        early = h  # read again by the head, after every block
        pair = self.blocks[0](h)
        h = pair[0]
        aux = pair[1]
        out = self.blocks[1](h)
        h = self.blocks[2](out["hidden"], aux)
        h = self.blocks[3](h, out["skip"])
        logits = self.head(h + early) / temperature + shift
        # context is opaque to the model (None in the example) and is echoed back as is.
        return {"logits": logits, "aux": aux, "context": context}


def structured(
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    d_in: int = 12,
    d_model: int = 32,
    d_out: int = 6,
    batch: int = 4,
    seq: int = 8,
) -> Example:
    def inputs(gen: torch.Generator, dt: torch.dtype) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x = torch.randn(batch, seq, d_in, generator=gen, dtype=dt)
        shift = torch.randn(d_out, generator=gen, dtype=dt)
        return (x, None), {"shift": shift, "temperature": 2.0}

    return _build(
        "structured",
        "Blocks returning a tuple and a dict, keyword-only root inputs, a None input "
        "echoed to the output, and an early value read by the head.",
        lambda: Structured(d_in=d_in, d_model=d_model, d_out=d_out),
        inputs,
        dtype=dtype,
        seed=seed,
    )


# ---------------------------------------------------------------------------
# slapo_seq / slapo_list: an untraceable ``pre`` before traceable layers


class DataDependentPre(nn.Module):
    """Deliberately untraceable: branches on a tensor value."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.linear(x)
        if y.sum() > 0:
            return y
        return -y


class LinearReLU(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.linear(x))
        return x


class SlapoSeq(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.pre = DataDependentPre(d_model)
        self.layers = nn.Sequential(LinearReLU(d_model), LinearReLU(d_model))
        self.post = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.post(self.layers(self.pre(x)))
        return x


class SlapoList(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.pre = DataDependentPre(d_model)
        self.layers = nn.ModuleList([LinearReLU(d_model), LinearReLU(d_model)])
        self.post = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre(x)
        for layer in self.layers:
            x = layer(x)
        x = self.post(x)
        return x


def _slapo(
    name: str, model_cls: type[SlapoSeq] | type[SlapoList], container: str
) -> Callable[..., Example]:
    def factory(
        *,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        d_model: int = 32,
        batch: int = 4,
    ) -> Example:
        def inputs(gen: torch.Generator, dt: torch.dtype) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (torch.randn(batch, d_model, generator=gen, dtype=dt),), {}

        return _build(
            name,
            f"Slapo partition-test shape: untraceable pre -> {container} of 2 Linear+ReLU -> post.",
            lambda: model_cls(d_model),
            inputs,
            dtype=dtype,
            seed=seed,
        )

    factory.__name__ = name
    return factory


slapo_seq = _slapo("slapo_seq", SlapoSeq, "nn.Sequential")
slapo_list = _slapo("slapo_list", SlapoList, "nn.ModuleList")


# ---------------------------------------------------------------------------
# scalars: a Python int and a 0-d tensor cross from block to block


class Measure(nn.Module):
    """Returns ``(hidden, width, norm)``: a tensor, a Python int and a 0-d tensor."""

    def __init__(self, d_in: int, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_model)

    def forward(self, x: Tensor) -> tuple[Tensor, int, Tensor]:
        h = self.linear(x)
        return h, h.size(-1), h.norm()


class Rescale(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, h: Tensor, width: int, norm: Tensor) -> Tensor:
        return torch.tanh(self.linear(h / width)) * (norm / (1.0 + norm))


class Scalars(nn.Module):
    def __init__(self, *, d_in: int, d_model: int, n_layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [Measure(d_in, d_model), *(Rescale(d_model) for _ in range(n_layers - 1))]
        )
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.size(0)  # an int from the root's input, used only at the end
        out = self.blocks[0](x)
        h = out[0]
        width = out[1]
        norm = out[2]
        for blk in self.blocks[1:]:
            h = blk(h, width, norm)
        scores: Tensor = self.head(h)
        return scores / batch  # per example, so microbatches split it on dim 0


def scalars(
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    d_in: int = 12,
    d_model: int = 32,
    n_layers: int = 4,
    batch: int = 4,
) -> Example:
    if n_layers < 2:
        raise ValueError(f"n_layers={n_layers}: scalars needs at least 2 blocks")

    def inputs(gen: torch.Generator, dt: torch.dtype) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.randn(batch, d_in, generator=gen, dtype=dt),), {}

    return _build(
        "scalars",
        "Block 0 returns (tensor, int width, 0-d norm); later blocks consume the int "
        "and the 0-d tensor; the root divides by an int read from its input's shape.",
        lambda: Scalars(d_in=d_in, d_model=d_model, n_layers=n_layers),
        inputs,
        dtype=dtype,
        seed=seed,
    )


# ---------------------------------------------------------------------------

EXAMPLES: dict[str, Callable[..., Example]] = {
    "gpt": gpt,
    "t5": t5,
    "structured": structured,
    "slapo_seq": slapo_seq,
    "slapo_list": slapo_list,
    "scalars": scalars,
}


def build(name: str, **options: Any) -> Example:
    """Build the example called ``name``; unknown names, and sizes or counts below 1 (every
    integer option but ``seed``), raise ValueError."""
    factory = EXAMPLES.get(name)
    if factory is None:
        raise ValueError(f"unknown example {name!r}; known examples: {', '.join(EXAMPLES)}")
    check_options(name, options)
    return factory(**options)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Sizes and counts (every integer option but ``seed``) must be at least 1: ValueError."""
    for key, value in options.items():
        if key != "seed" and type(value) is int and value < 1:
            raise ValueError(f"{name}: {key}={value}; sizes and counts must be at least 1")
