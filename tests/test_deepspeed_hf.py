"""DeepSpeed's engine on real models: transformers GPT-2 and LLaMA, exported and cut by
stagecut, equal a single-process run of the unsplit model in float64 (1e-9)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from adapters.deepspeed.check import train_many  # noqa: E402
from adapters.launch import launch  # noqa: E402
from adapters.pipelining.check import TrainSpec  # noqa: E402
from tests.test_deepspeed import _assert_same  # noqa: E402

RUNS_2 = [
    # GPT-2 ties its embedding to the head: a tie between the first and the last stage.
    TrainSpec("hf:gpt2", (("n_layers", 4), ("batch", 8)), ("transformer.h.1",), lr=0.05, engine="deepspeed"),
    # LLaMA with its loss from `labels` (ModelOutput.loss), cut inside a block.
    TrainSpec("hf:llama", (("n_layers", 4), ("batch", 8), ("labels", True)), ("model.layers.1.self_attn",),
              lr=0.05, engine="deepspeed"),
]


def test_transformers_models_train_on_deepspeed_like_one_process() -> None:
    results = launch(train_many, 2, RUNS_2, timeout_s=600)
    for i, spec in enumerate(RUNS_2):
        _assert_same(spec, [rank_results[i] for rank_results in results])
