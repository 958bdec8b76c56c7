"""The torch.export frontend: real models (transformers) -> core `Snapshot`.

Non-strict export of the root with two kinds of markers: modules on the way to a cut are
bracketed by `enter`/`exit` ops (so the flat ATen graph can be cut back into one graph per
module), and every other module they call is one opaque `leaf` op, so export never looks
inside it. See `capture` and `regroup`.
"""

from adapters.export.trace import snapshot_export

__all__ = ["snapshot_export"]
