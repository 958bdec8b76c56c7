"""Run a plan on DeepSpeed's pipeline engine (`deepspeed.pipe`): one layer per stage, the
shared boundary codec, ties across any stages, a config that keeps the math the model's.

Needs the `deepspeed` extra (`pip install 'stagecut[deepspeed]'`, built with DS_BUILD_OPS=0).
"""

import os

import torch

# DeepSpeed picks its accelerator once, at first use; without a GPU make that the CPU one
# (gloo), without its detection probe and warning.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from adapters.deepspeed.config import ds_config  # noqa: E402
from adapters.deepspeed.pipeline import DeepSpeedPipeline, StagecutPipelineModule, init_comm, pipeline_module  # noqa: E402

__all__ = ["DeepSpeedPipeline", "StagecutPipelineModule", "ds_config", "init_comm", "pipeline_module"]
