"""The DeepSpeed configuration a stagecut pipeline runs with: every setting that would silently
change the result is set, and says why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def ds_config(
    *,
    micro_batch_size: int,
    num_microbatches: int,
    data_parallel: int = 1,
    gradient_clipping: float = 0.0,
    activation_checkpointing: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config dict for `deepspeed.initialize`.

    - `train_micro_batch_size_per_gpu` / `gradient_accumulation_steps` / `train_batch_size`:
      the engine pulls `num_microbatches` microbatches per `train_batch` and divides the loss
      by that count before backward, so the gradient is the mean over microbatches (the same
      as the unsplit model on the whole batch with a mean loss).
    - `gradient_clipping`: DeepSpeed clips the global gradient norm to 1.0 unless told
      otherwise, which rescales updates without a word; 0.0 turns clipping off. Pass a norm
      to clip on purpose.
    - `prescale_gradients` off, `gradient_predivide_factor` 1.0: data-parallel gradients are
      averaged once, after the all-reduce.
    - `zero_optimization.stage` 0: ZeRO 2 and 3 do not work with the pipeline engine; stage 1
      would replace the optimizer's step with DeepSpeed's own.
    - `fp16` / `bf16` off: the model runs in the dtype it was built in.
    - `pipeline.activation_checkpoint_interval` 1 recomputes each stage's forward in backward
      (one layer per stage). `pipeline.use_reentrant` false: the reentrant checkpoint cuts
      the graph when no input of the stage requires grad (the first stage's integer ids), so
      the first stage's parameters would get no gradient.
    - `pipeline.pipe_partitioned` / `grad_partitioned` off: they split the first tensor of a
      boundary across tensor-parallel ranks, which a stagecut pipeline does not have.
    - `steps_per_print` off and `wall_clock_breakdown` off: no output of DeepSpeed's own.

    `overrides` is merged last, key by key at the top level.
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": num_microbatches,
        "train_batch_size": micro_batch_size * num_microbatches * data_parallel,
        "gradient_clipping": gradient_clipping,
        "prescale_gradients": False,
        "gradient_predivide_factor": 1.0,
        "zero_optimization": {"stage": 0},
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "pipeline": {
            "activation_checkpoint_interval": 1 if activation_checkpointing else 0,
            "use_reentrant": False,
            "pipe_partitioned": False,
            "grad_partitioned": False,
        },
        "steps_per_print": None,
        "wall_clock_breakdown": False,
    }
    config.update(overrides or {})
    return config
