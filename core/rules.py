"""Per-op rules, in one table: which nodes are pure projections, which can be recomputed anywhere.

Targets of call_function nodes are `f"{fn.__module__}.{fn.__qualname__}"` (the fx adapter's
naming), so `operator.getitem` is `"_operator.getitem"`.
"""

from __future__ import annotations

from core.graph import Node

GETITEM = "_operator.getitem"
GETATTR = "builtins.getattr"

# Reading an item or attribute of a value: evaluated where the value is made, so that only
# the item, never the whole tuple/dict, crosses a stage boundary.
PROJECTIONS: frozenset[tuple[str, str]] = frozenset(
    {("call_function", GETITEM), ("call_function", GETATTR), ("call_method", "get")}
)


def is_projection(node: Node) -> bool:
    return (node.op, node.target) in PROJECTIONS


def is_rematerialized(node: Node) -> bool:
    """Copied into every stage that reads it instead of being sent (parameter reads)."""
    return node.op == "get_attr"


def is_compute(node: Node) -> bool:
    """Counts as work when deciding whether a stage is empty."""
    return node.op.startswith("call_") and not is_projection(node)
