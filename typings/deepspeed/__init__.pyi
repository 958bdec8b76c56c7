# Stubs for the part of DeepSpeed (0.19) that adapters/deepspeed calls; nothing else is declared.
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from torch import nn
from torch.optim import Optimizer

from deepspeed import ops as ops
from deepspeed.runtime.engine import DeepSpeedEngine

def init_distributed(
    dist_backend: str | None = ...,
    auto_mpi_discovery: bool = ...,
    distributed_port: int = ...,
    verbose: bool = ...,
    timeout: timedelta = ...,
    init_method: str | None = ...,
    dist_init_required: bool | None = ...,
    config: Any = ...,
    rank: int = ...,
    world_size: int = ...,
) -> None: ...
def initialize(
    args: Any = ...,
    model: nn.Module | None = ...,
    optimizer: Optimizer | None = ...,
    model_parameters: Any = ...,
    training_data: Any = ...,
    lr_scheduler: Any = ...,
    distributed_port: int = ...,
    mpu: Any = ...,
    dist_init_required: bool | None = ...,
    collate_fn: Any = ...,
    config: str | Mapping[str, Any] | None = ...,
    mesh_param: Any = ...,
    config_params: Any = ...,
) -> tuple[DeepSpeedEngine, Any, Any, Any]: ...
