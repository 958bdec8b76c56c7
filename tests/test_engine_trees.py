"""Containers crossing a boundary on the engines: a cut inside a T5-style block whose boundary
carries a tuple of tensors (`self_out[1:]`), and a dict of tensors (keys kept), trained on
torch.distributed.pipelining and on DeepSpeed equal to one process in float64."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import Tensor, nn

from adapters.engine.trees import is_container
from adapters.fx import run_stages, snapshot, stage_modules
from adapters.launch import launch
from adapters.pipelining.check import TrainResult, TrainSpec, train_many, train_reference
from core import plan


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.q(x)
        return h, torch.tanh(h), h * 0.5  # hidden states, then a position bias and weights


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _SelfAttention()

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        self_out = self.attention(x)
        return self_out[0] + x, self_out[1:]  # the slice is a tuple of tensors


class _Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        return {"gate": torch.sigmoid(h), "value": h * self.scale}


class _Merge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(4, 4)

    def forward(self, parts: dict[str, Tensor], extra: tuple[Tensor, ...]) -> Tensor:
        return self.out(parts["gate"] * parts["value"] + extra[0] + extra[1])


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer, self.split, self.merge = _Layer(), _Split(), _Merge()

    def forward(self, x: Tensor) -> Tensor:
        h, rest = self.layer(x)
        parts = self.split(h)
        return self.merge(parts, rest)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(4, 4), _Block(), nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.embed(x)))


def make(batch: int = 8) -> tuple[nn.Module, tuple[Tensor]]:
    """The factory the engine tests train (every rank seeds torch the same way first)."""
    return _Model().double(), (torch.randn(batch, 4, dtype=torch.float64),)


# Stage 0 ends after block.layer (its tuple `rest` crosses), stage 1 after block.split (the
# dict `parts` and the tuple cross again).
CUTS = ("block.layer", "block.split")


def test_the_boundaries_carry_a_tuple_and_a_dict() -> None:
    torch.manual_seed(0)
    model, args = make()
    staged = plan(snapshot(model, *args, cuts=list(CUTS)), CUTS)
    modules = stage_modules(staged, model)
    values = [modules[0](*args)]
    values.append(modules[1](*values[0]))
    crossing = [v for sent in values for v in sent]
    assert any(type(v) is tuple and len(v) == 2 for v in crossing)
    assert any(type(v) is dict and list(v) == ["gate", "value"] for v in crossing)
    assert all(is_container(v) or isinstance(v, Tensor) for v in crossing)
    with torch.no_grad():
        assert torch.equal(run_stages(modules, *args), model(*args))


def _assert_same(spec: TrainSpec, ranks: list[TrainResult]) -> None:
    reference = train_reference(spec)
    losses = [r.losses for r in ranks if r.losses]
    assert len(losses) == 1
    assert losses[0] == pytest.approx(reference.losses, abs=1e-9, rel=0)
    held = {name: value for r in ranks for name, value in r.params.items()}
    assert held.keys() == reference.params.keys()
    for name, value in held.items():
        assert torch.allclose(value, reference.params[name], atol=1e-9, rtol=0), name


def test_containers_cross_on_the_pipelining_engine() -> None:
    spec = TrainSpec("tests.test_engine_trees:make", (), CUTS, "gpipe", lr=0.1)
    results = launch(train_many, 3, [spec], timeout_s=300)
    _assert_same(spec, [rank[0] for rank in results])


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_containers_cross_on_deepspeed() -> None:
    from adapters.deepspeed.check import train_many as train_many_deepspeed

    spec = TrainSpec("tests.test_engine_trees:make", (), CUTS, "1f1b", lr=0.1, engine="deepspeed")
    results = launch(train_many_deepspeed, 3, [spec], timeout_s=300)
    _assert_same(spec, [rank[0] for rank in results])
