"""The engine on real models: transformers GPT-2 and LLaMA, exported and cut by stagecut, trained
on torch.distributed.pipelining (gloo, CPU processes) equal a single-process run of the unsplit
model in float64: per-step loss and every parameter within 1e-9."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from adapters.launch import launch  # noqa: E402
from adapters.pipelining.check import TrainResult, TrainSpec, train_many, train_reference  # noqa: E402

TOL = 1e-9

RUNS_2 = [
    # GPT-2 ties its embedding to the head: a tie between the first and the last stage.
    TrainSpec("hf:gpt2", (("n_layers", 4), ("batch", 8)), ("transformer.h.1",), "1f1b", lr=0.05),
    # LLaMA with its loss from `labels` (the model's ModelOutput.loss), cut inside a block.
    TrainSpec("hf:llama", (("n_layers", 4), ("batch", 8), ("labels", True)), ("model.layers.1.self_attn",), "gpipe", lr=0.05),
]
RUNS_4 = [
    TrainSpec("hf:llama", (("n_layers", 4), ("batch", 8)), ("model.layers.0", "model.layers.1", "model.layers.2"), "1f1b", lr=0.05),
]


def _assert_same(spec: TrainSpec, ranks: list[TrainResult]) -> None:
    reference = train_reference(spec)
    losses = [r.losses for r in ranks if r.losses]
    assert len(losses) == 1, "exactly one rank holds the last stage"
    assert losses[0] == pytest.approx(reference.losses, abs=TOL, rel=0), spec
    compared = set()
    for result in ranks:
        for name, value in result.params.items():
            assert torch.allclose(value, reference.params[name], atol=TOL, rtol=0), (spec, name)
            compared.add(name)
    assert compared == set(reference.params), "every parameter is held by some rank"
    first = reference.params
    assert any(not torch.equal(v, spec.build().model.get_parameter(n)) for n, v in first.items()), "training moved the weights"


@pytest.mark.parametrize("world_size, runs", [(2, RUNS_2), (4, RUNS_4)])
def test_transformers_models_train_on_the_engine_like_one_process(world_size: int, runs: list[TrainSpec]) -> None:
    results = launch(train_many, world_size, runs, timeout_s=600)
    for i, spec in enumerate(runs):
        _assert_same(spec, [rank_results[i] for rank_results in results])
