"""The engine: generated stages trained on torch.distributed.pipelining (gloo, CPU processes)
match a single-process run of the unsplit model: per-step loss and every parameter."""

from __future__ import annotations

import pytest
import torch

from adapters.launch import LaunchError, launch
from adapters.pipelining.check import TrainResult, TrainSpec, train_many, train_reference

GPT = (("n_layers", 4), ("batch", 8))
T5 = (("n_layers", 2), ("batch", 8))

# World size 2: one and two stages per rank, every schedule kind.
RUNS_2 = [
    TrainSpec("gpt", GPT, ("blocks.1",), "gpipe"),
    TrainSpec("gpt", GPT, ("blocks.1",), "1f1b"),
    TrainSpec("gpt", GPT, ("blocks.0", "blocks.1", "blocks.2"), "interleaved"),
    TrainSpec("gpt", GPT, ("blocks.0", "blocks.1", "blocks.2"), "looped_bfs"),
    TrainSpec("gpt", GPT, ("blocks.0", "blocks.1", "blocks.2"), "zero_bubble"),
    TrainSpec("t5", T5, ("encoder.block.1",), "1f1b"),
    TrainSpec("t5", T5, ("encoder.block.0", "encoder", "decoder.block.0"), "interleaved"),
    # A boundary carrying a skip value, a tuple item, a float kwarg and a None.
    TrainSpec("structured", (("batch", 8),), ("blocks.0", "blocks.1", "blocks.2"), "looped_bfs", replicate=("shift",)),
    # An int (from .size()) and a 0-d tensor cross the boundary.
    TrainSpec("scalars", (("batch", 8),), ("blocks.0",), "gpipe"),
]
RUNS_4 = [
    TrainSpec("gpt", GPT, ("blocks.0", "blocks.1", "blocks.2"), "1f1b"),
    TrainSpec("t5", T5, ("encoder.block.0", "encoder", "decoder.block.0"), "gpipe"),
]


def _assert_same(spec: TrainSpec, ranks: list[TrainResult]) -> None:
    reference = train_reference(spec)
    losses = [r.losses for r in ranks if r.losses]
    assert len(losses) == 1, "exactly one rank holds the last stage"
    assert losses[0] == pytest.approx(reference.losses, abs=1e-6), spec
    compared = set()
    for result in ranks:
        for name, value in result.params.items():
            assert torch.allclose(value, reference.params[name], atol=1e-6, rtol=0), (spec, name)
            compared.add(name)
    assert compared == {n for n in reference.params}, "every parameter is held by some rank"


@pytest.mark.parametrize("world_size, runs", [(2, RUNS_2), (4, RUNS_4)])
def test_pipelined_training_matches_single_process(world_size: int, runs: list[TrainSpec]) -> None:
    results = launch(train_many, world_size, runs, timeout_s=600)
    for i, spec in enumerate(runs):
        _assert_same(spec, [rank_results[i] for rank_results in results])


def test_a_failing_rank_fails_the_launch_fast() -> None:
    bad = TrainSpec("gpt", GPT, ("no.such.block",), "gpipe")
    with pytest.raises(LaunchError) as info:
        launch(train_many, 2, [bad], timeout_s=120)
    assert "UnknownPath" in str(info.value)
