"""The torch.fx adapter: nn.Module -> Snapshot, and Plan -> runnable stage modules."""

from adapters.graph.stages import run_stages, stage_modules
from adapters.fx.trace import snapshot

__all__ = ["run_stages", "snapshot", "stage_modules"]
