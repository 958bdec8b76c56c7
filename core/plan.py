"""`plan(snapshot, cuts)`: the passes in order, and the `Plan` they produce."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from core.assign import ANY_STAGE, assign_stages
from core.cuts import Cut, CutLike
from core.graph import Graph, Node, Origin, Ref
from core.liveness import live_in
from core.propagate import FlatGraph, propagate
from core.snapshot import Param, Snapshot
from core.ties import TieGroup, tie_groups
from core.validate import check_cuts, check_snapshot


@dataclass(frozen=True, slots=True)
class StageFigures:
    """Sizes of one stage; bytes are per microbatch and `None` where value info is missing."""

    params: int
    param_bytes: int
    bytes_in: int | None
    bytes_out: int | None


@dataclass(frozen=True, slots=True)
class Stage:
    """One pipeline stage: a closed graph whose placeholders are `inputs` and output `outputs`."""

    index: int
    graph: Graph
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...]
    modules: tuple[str, ...]
    figures: StageFigures

    @property
    def bypass(self) -> tuple[str, ...]:
        """Inputs this stage only passes on."""
        read = {name for node in self.graph.nodes if node.op != "output" for name in node.inputs()}
        sent = set(self.outputs)
        return tuple(n for n in self.inputs if n not in read and n in sent)


@dataclass(frozen=True, slots=True)
class Plan:
    stages: tuple[Stage, ...]
    ties: tuple[TieGroup, ...]
    cuts: tuple[Cut, ...]
    tracer: str = ""  # the frontend that made the snapshot (see `Snapshot.tracer`)

    @property
    def origin(self) -> Origin:
        """`"json"` when any stage graph was read from a JSON file (or planned from a snapshot
        that was), else `"process"`: see `Graph.origin`."""
        return "json" if any(s.graph.origin == "json" for s in self.stages) else "process"

    @property
    def liveness(self) -> tuple[tuple[str, ...], ...]:
        """What each stage receives (the seed's `liveness`): `liveness[s] == stages[s].inputs`."""
        return tuple(s.inputs for s in self.stages)

    def __str__(self) -> str:
        from core.table import render_table

        return render_table(self)

    def to_json(self) -> str:
        from core.serialize import plan_to_json

        return plan_to_json(self)

    @staticmethod
    def from_json(text: str) -> Plan:
        from core.serialize import plan_from_json

        return plan_from_json(text)


def plan(snapshot: Snapshot, cuts: Iterable[CutLike] = ()) -> Plan:
    """Cut `snapshot` at `cuts` (paths, or `Cut`s) into pipeline stages.

    Bad snapshots and cuts raise a `PlanError`; arguments of the wrong type (a string instead of
    a list of cuts, anything but a `Snapshot`) a `TypeError`."""
    if not isinstance(snapshot, Snapshot):
        raise TypeError(
            f"plan() takes a core.Snapshot (adapters.fx.snapshot(model, ...) or Snapshot.from_json), "
            f"not {type(snapshot).__name__}"
        )
    with no_cycle_collection():
        return _plan(snapshot, cuts)


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause CPython's cyclic GC while planning. The passes make no reference cycles, but they
    allocate many long-lived objects beside the snapshot's millions, and each full collection
    this triggers walks them all: about 40% of the time at 1M nodes (bench/plan_scaling.py).
    Nothing is lost: reference counting frees everything; the state is restored on exit."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plan(snapshot: Snapshot, cuts: Iterable[CutLike]) -> Plan:
    check_snapshot(snapshot)
    spine = check_cuts(snapshot, cuts)
    flat = propagate(snapshot, spine)
    stages = assign_stages(flat)
    num_stages = len(flat.boundaries) + 1
    live = live_in(flat.graph, stages, num_stages)
    built = _stage_graphs(flat, stages, live)
    found = [_params_of(snapshot, nodes) for nodes in built]
    stage_params = [tuple(f) for f in found]
    origin = snapshot.origin  # graphs made from a file's nodes are as untrusted as the file
    known = {name: param for f in found for name, param in f.items()}
    ties = tie_groups(snapshot, stage_params, known)
    result = []
    for s, nodes in enumerate(built):
        outputs = live[s + 1] if s + 1 < num_stages else tuple(dict.fromkeys(nodes[-1].inputs()))
        result.append(
            Stage(
                index=s,
                graph=Graph(tuple(nodes), origin),
                inputs=live[s],
                outputs=outputs,
                params=stage_params[s],
                modules=tuple(n.target for n in nodes if n.op == "call_module"),
                figures=_figures(found[s], flat.graph, live[s], outputs),
            )
        )
    return Plan(tuple(result), ties, spine.cuts, snapshot.tracer)


def _stage_graphs(
    flat: FlatGraph, stages: tuple[int, ...], live: tuple[tuple[str, ...], ...]
) -> list[list[Node]]:
    graph = flat.graph
    num_stages = len(live)
    # Stages that read each parameter node (it is copied into each of them).
    readers: dict[str, set[int]] = {}
    for node, stage in zip(graph.nodes, stages):
        for name in node.inputs():
            if stages[graph.position(name)] == ANY_STAGE:
                readers.setdefault(name, set()).add(stage)
    built: list[list[Node]] = [[] for _ in range(num_stages)]
    for s in range(1, num_stages):
        built[s] = [_received(graph.node(name)) for name in live[s]]
    for node, stage in zip(graph.nodes, stages):
        if stage == ANY_STAGE:
            for reader in sorted(readers.get(node.name, ())):
                built[reader].append(node)
        elif node.op != "output":
            built[stage].append(node)
    for s in range(num_stages - 1):
        built[s].append(Node("output", "output", "output", (tuple(Ref(n) for n in live[s + 1]),)))
    built[-1].append(graph.output)
    return built


def _received(node: Node) -> Node:
    return Node(node.name, "placeholder", node.name, info=node.info)


def _params_of(snapshot: Snapshot, nodes: list[Node]) -> dict[str, Param]:
    """The parameters a stage holds, by qualified name, in name order."""
    found: dict[str, Param] = {}
    for node in nodes:
        if node.op == "get_attr":
            param = snapshot.param(node.target)
            if param is not None:
                found[node.target] = param
        elif node.op == "call_module":
            found.update(snapshot.params_under(node.target))
    return {name: found[name] for name in sorted(found)}


def _figures(
    params: Mapping[str, Param], graph: Graph, inputs: tuple[str, ...], outputs: tuple[str, ...]
) -> StageFigures:
    storages = {p.key: p for p in params.values() if not p.buffer}
    return StageFigures(
        params=sum(p.numel for p in storages.values()),
        param_bytes=sum(p.nbytes for p in storages.values()),
        bytes_in=graph.bytes_of(inputs),
        bytes_out=graph.bytes_of(outputs),
    )

