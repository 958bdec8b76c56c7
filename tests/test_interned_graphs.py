"""Equal blocks trace to one shared graph object (adapters.graph.module_tree.interned); the
figures read each distinct graph once, and give the same numbers on a snapshot read back
from JSON, where nothing is shared."""

from __future__ import annotations

from adapters.examples import build
from adapters.fx import snapshot
from core import Snapshot, plan
from core.figures import figures


def test_equal_blocks_share_one_graph_and_the_figures_do_not_depend_on_it() -> None:
    example = build("gpt", n_layers=4)
    snap = snapshot(example.model, *example.args)
    blocks = [snap.root.children["blocks"].children[str(i)] for i in range(4)]
    assert all(b.graph is blocks[0].graph for b in blocks)
    assert blocks[0].graph is not snap.root.graph
    loaded = Snapshot.from_json(snap.to_json())
    loaded_blocks = [loaded.root.children["blocks"].children[str(i)] for i in range(4)]
    assert loaded_blocks[0].graph is not loaded_blocks[1].graph and loaded_blocks[0].graph == loaded_blocks[1].graph
    cuts = ["blocks.0", "blocks.2"]
    shared = figures(plan(snap, cuts), snap, schedule="1f1b", microbatches=4, optimizer="adam")
    separate = figures(plan(loaded, cuts), loaded, schedule="1f1b", microbatches=4, optimizer="adam")
    assert [s.memory for s in shared.stages] == [s.memory for s in separate.stages]
    assert all(s.memory.peak for s in shared.stages)
