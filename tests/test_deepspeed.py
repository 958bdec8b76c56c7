"""The DeepSpeed engine: generated stages trained on DeepSpeed's pipeline engine (gloo, CPU
processes, one stage per process) match a single-process run of the unsplit model: per-step
loss and every parameter, within 1e-9 in float64 and 1e-6 in float32 (losses relative)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from adapters import examples
from adapters.deepspeed.check import train_many
from adapters.launch import LaunchError, launch
from adapters.pipelining.check import TrainResult, TrainSpec, train_reference

GPT = (("n_layers", 4), ("batch", 8))
T5 = (("n_layers", 2), ("batch", 8))
FOUR = ("blocks.0", "blocks.1", "blocks.2")


def tied_blocks(n_layers: int = 4, batch: int = 8) -> tuple[nn.Module, tuple[Any, ...]]:
    """The gpt example (float64) with one more tie: blocks.2's MLP input weight is blocks.1's.
    Cut after blocks.0, .1, .2 the tie is between the two middle stages."""
    example = examples.build("gpt", n_layers=n_layers, batch=batch, dtype=torch.float64)
    blocks: Any = example.model.blocks
    blocks[2].mlp.fc.weight = blocks[1].mlp.fc.weight
    return example.model, example.args


class _Fails(nn.LayerNorm):
    """A LayerNorm that raises on its third real forward with gradients (the example run is the
    first; training microbatches come next)."""

    calls = 0

    def forward(self, x: Tensor) -> Tensor:
        if type(x) is torch.Tensor and torch.is_grad_enabled():
            _Fails.calls += 1
            if _Fails.calls >= 3:
                raise RuntimeError("the last stage fails mid-step")
        return super().forward(x)


def failing_gpt(n_layers: int = 2, batch: int = 8) -> tuple[nn.Module, tuple[Any, ...]]:
    example = examples.build("gpt", n_layers=n_layers, batch=batch, dtype=torch.float64)
    model: Any = example.model
    failing = _Fails(model.ln_f.normalized_shape, dtype=torch.float64)
    failing.load_state_dict(model.ln_f.state_dict())
    model.ln_f = failing
    return model, example.args


def deepspeed(model: str, options: tuple[tuple[str, Any], ...], cuts: tuple[str, ...], **more: Any) -> TrainSpec:
    return TrainSpec(model, options, cuts, engine="deepspeed", **more)


# World size 2: two stages, one per process.
RUNS_2 = [
    # The tied embedding and head, on the first and the last stage.
    deepspeed("gpt", GPT, ("blocks.1",)),
    deepspeed("gpt", GPT, ("blocks.1",), dtype="float32"),
    # Activation checkpointing, with integer ids the only input of the first stage.
    deepspeed("gpt", GPT, ("blocks.1",), checkpointing=True),
    deepspeed("t5", T5, ("encoder.block.1",)),
    # A tuple item, a dict item and a float crossing; a None and a scalar model input.
    deepspeed("structured", (("batch", 8),), ("blocks.1",), replicate=("shift",)),
    # An int (from .size()) and a 0-d tensor cross the boundary.
    deepspeed("scalars", (("batch", 8),), ("blocks.0",)),
    # A tie between blocks, on different stages (with two stages, neither is a middle one).
    deepspeed("tests.test_deepspeed:tied_blocks", (), ("blocks.1",)),
]
RUNS_4 = [
    deepspeed("gpt", GPT, FOUR),
    # The encoder output skips the decoder's first stage's predecessor: it is received by
    # stage 2 and passed on to stage 3 next to the decoder state.
    deepspeed("t5", T5, ("encoder.block.0", "encoder", "decoder.block.0")),
    deepspeed("t5", T5, ("encoder.block.0", "encoder", "decoder.block.0"), dtype="float32"),
    # A tuple, a dict, the skip value and the early value cross, some of them two boundaries.
    deepspeed("structured", (("batch", 8),), FOUR, replicate=("shift",)),
    # A tie between the two middle stages, and the embedding/head tie between the ends.
    deepspeed("tests.test_deepspeed:tied_blocks", (), FOUR),
]


def _assert_same(spec: TrainSpec, ranks: list[TrainResult]) -> None:
    tolerance = 1e-9 if spec.dtype == "float64" else 1e-6
    reference = train_reference(spec)
    losses = [r.losses for r in ranks if r.losses]
    assert len(losses) == 1, "exactly one rank holds the last stage"
    # Losses of about 20: 1e-6 absolute is below one float32 ulp there (1.9e-6), so losses
    # compare relative to max(1, |loss|); parameters (about 1) compare absolute.
    assert losses[0] == pytest.approx(reference.losses, rel=tolerance, abs=tolerance), spec
    compared = set()
    for result in ranks:
        for name, value in result.params.items():
            assert value.dtype == reference.params[name].dtype
            assert torch.allclose(value, reference.params[name], atol=tolerance, rtol=0), (spec, name)
            compared.add(name)
    assert compared == set(reference.params), "every parameter is held by some rank"


@pytest.mark.parametrize("world_size, runs", [(2, RUNS_2), (4, RUNS_4)])
def test_deepspeed_training_matches_single_process(world_size: int, runs: list[TrainSpec]) -> None:
    results = launch(train_many, world_size, runs, timeout_s=600)
    for i, spec in enumerate(runs):
        _assert_same(spec, [rank_results[i] for rank_results in results])


def test_data_parallel_replicas_train_like_one_process() -> None:
    # 2 stages x 2 replicas on 4 processes, float32 (DeepSpeed averages the replicas'
    # gradients in its data-parallel all-reduce); the embedding/head tie is summed per replica.
    spec = deepspeed("gpt", GPT, ("blocks.1",), dtype="float32", data_parallel=2)
    ranks = launch(train_many, 4, [spec], timeout_s=600)
    reference = train_reference(spec)
    losses = [r[0].losses for r in ranks if r[0].losses]
    assert len(losses) == 2, "each replica has a last stage"
    for replica in losses:
        assert replica == pytest.approx(reference.losses, rel=1e-6, abs=1e-6)
    held: dict[str, int] = {}
    for result in ranks:
        for name, value in result[0].params.items():
            assert torch.allclose(value, reference.params[name], atol=1e-6, rtol=0), name
            held[name] = held.get(name, 0) + 1
    assert set(held) == set(reference.params) and set(held.values()) == {2}


def test_float64_with_data_parallel_replicas_is_refused() -> None:
    with pytest.raises(LaunchError) as info:
        launch(train_many, 4, [deepspeed("gpt", GPT, ("blocks.1",), data_parallel=2)], timeout_s=300)
    assert "float64" in str(info.value) and "data_parallel=1" in str(info.value)


def test_a_rank_failing_mid_step_fails_the_launch_fast() -> None:
    # The last stage raises in its second training microbatch while the first stage's rank
    # waits in the engine's point-to-point exchange.
    spec = deepspeed("tests.test_deepspeed:failing_gpt", (), ("blocks.0",))
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(train_many, 2, [spec], timeout_s=300)
    assert info.value.rank == 1
    assert "the last stage fails mid-step" in str(info.value)
    assert time.monotonic() - start < 120
