from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from deepspeed.runtime.pipe.topology import ProcessTopology

class PipelineModule(nn.Module):
    loss_fn: Callable[..., Any] | None
    def __init__(
        self,
        layers: Iterable[Any],
        num_stages: int | None = ...,
        topology: ProcessTopology | None = ...,
        loss_fn: Callable[..., Any] | None = ...,
        seed_layers: bool = ...,
        seed_fn: Callable[..., Any] | None = ...,
        base_seed: int = ...,
        partition_method: str = ...,
        activation_checkpoint_interval: int = ...,
        activation_checkpoint_func: Callable[..., Any] = ...,
        checkpointable_layers: list[str] | None = ...,
        dynamic_shape: bool = ...,
    ) -> None: ...
    def forward(self, forward_input: Any) -> Any: ...
    def topology(self) -> ProcessTopology: ...
    def allreduce_tied_weight_gradients(self) -> None: ...
    def get_tied_weights_and_groups(self) -> list[tuple[torch.Tensor, Any]]: ...
