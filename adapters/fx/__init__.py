"""The torch.fx adapter: nn.Module -> Snapshot, and Plan -> runnable stage modules.

`snapshot` is the entry point for both frontends (an exported program is an fx graph too):
`tracer="fx" | "export" | "auto"`, see `adapters.fx.entry`.
"""

from adapters.fx.entry import TRACERS, Tracer, UntraceableModel, snapshot
from adapters.graph.stages import run_stages, stage_modules

__all__ = ["TRACERS", "Tracer", "UntraceableModel", "run_stages", "snapshot", "stage_modules"]
