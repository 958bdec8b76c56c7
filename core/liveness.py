"""Pass 4: two-pass liveness. Which values each stage receives.

A value is live from the stage after the one that defines it through the last stage that
reads it; every stage in between receives it and passes it on (a skip connection), and no
other stage does. Lists are in definition order, so every rank derives the same order.
"""

from __future__ import annotations

from core.assign import ANY_STAGE
from core.graph import Graph


def live_in(graph: Graph, stages: tuple[int, ...], num_stages: int) -> tuple[tuple[str, ...], ...]:
    """For each stage, the names it receives; stage 0 receives the model inputs in order."""
    nodes = graph.nodes
    # Backward pass: the last stage that reads each value.
    last_read = [ANY_STAGE] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        reader = stages[i]
        if reader == ANY_STAGE:
            continue
        for name in nodes[i].inputs():
            j = graph.position(name)
            if last_read[j] < reader:
                last_read[j] = reader
    # Forward pass: each value joins the live set of the stages it must reach.
    live: list[list[str]] = [[] for _ in range(num_stages)]
    live[0] = [n.name for n in graph.placeholders]
    for i, node in enumerate(nodes):
        defined = stages[i]
        if defined == ANY_STAGE:
            continue
        for stage in range(defined + 1, last_read[i] + 1):
            live[stage].append(node.name)
    return tuple(tuple(names) for names in live)
