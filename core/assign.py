"""Pass 3: stage assignment. A node's stage is the number of boundaries before it."""

from __future__ import annotations

from core.errors import EmptyStage
from core.propagate import FlatGraph
from core.rules import is_compute, is_projection, is_rematerialized

ANY_STAGE = -1  # parameter reads: copied into every stage that uses them


def assign_stages(flat: FlatGraph) -> tuple[int, ...]:
    """The stage of every node of `flat.graph` (`ANY_STAGE` for rematerialized nodes).

    Placeholders go to stage 0 and the output to the last stage. A projection moves back to
    the latest stage among its inputs, so an item is read where its tuple is made.
    """
    graph = flat.graph
    positions = [b.position for b in flat.boundaries]
    last_stage = len(positions)
    stages: list[int] = []
    work = [0] * (last_stage + 1)
    current = 0
    for i, node in enumerate(graph.nodes):
        while current < last_stage and positions[current] <= i:
            current += 1
        if node.op == "placeholder":
            stage = 0
        elif node.op == "output":
            stage = last_stage
        elif is_rematerialized(node):
            stage = ANY_STAGE
        elif is_projection(node):
            sources = [stages[graph.position(n)] for n in node.inputs()]
            stage = max((s for s in sources if s != ANY_STAGE), default=current)
        else:
            stage = current
        if is_compute(node):
            work[current] += 1
        stages.append(stage)
    for stage, count in enumerate(work):
        if count == 0 and last_stage > 0:  # without cuts, even an empty model is one stage
            before = str(flat.boundaries[stage - 1].cut) if stage > 0 else "the start of the model"
            after = str(flat.boundaries[stage].cut) if stage < last_stage else "the end of the model"
            raise EmptyStage(stage, before, after)
    return tuple(stages)
