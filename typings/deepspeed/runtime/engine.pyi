from typing import Any

import torch
from torch import nn

class DeepSpeedEngine(nn.Module):
    module: nn.Module
    device: torch.device
    def train_batch(self, data_iter: Any = ...) -> torch.Tensor: ...
