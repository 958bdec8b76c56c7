from collections.abc import Iterator
from typing import Any

import torch

from deepspeed.runtime.engine import DeepSpeedEngine

class PipelineEngine(DeepSpeedEngine):
    # True: the engine all-reduces gradients over the data-parallel group in each step.
    pipeline_enable_backward_allreduce: bool
    def train_batch(self, data_iter: Iterator[Any] | None = ...) -> torch.Tensor: ...
    def is_first_stage(self) -> bool: ...
    def is_last_stage(self) -> bool: ...
    stage_id: int
