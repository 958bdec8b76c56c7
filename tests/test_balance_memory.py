"""core.balance(..., max_memory=...) against brute force: every cut set among the candidates
planned (`core.plan`) and priced (`core.figures`), the feasible ones compared by bottleneck
cost, ties by the earliest boundaries. Torch-free random snapshots (skip connections, tied
weights, several dtypes) and the example zoo traced with fx."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from core import costs, plan
from core.balance import balance_report
from core.builder import GraphBuilder, module
from core.errors import BalanceError
from core.figures import figures
from core.fit import Training
from core.graph import ValueInfo
from core.snapshot import Param, Snapshot


def _act(rows: int, width: int, dtype: str = "float32") -> ValueInfo:
    size = {"float32": 4, "bfloat16": 2, "float64": 8}[dtype]
    return ValueInfo("tensor", (rows, width), dtype, rows * width * size)


def random_snapshot(seed: int, blocks: int = 7) -> Snapshot:
    """A chain of Linear/GELU/LayerNorm leaves with residual adds, one input read again at the
    end (a bypass), uneven widths and a tied weight between the first and last layers."""
    rng = random.Random(seed)
    dtype = rng.choice(["float32", "bfloat16", "float64"])
    rows = rng.choice([4, 8])
    g = GraphBuilder()
    x = g.placeholder("x", info=_act(rows, 16, dtype))
    h = g.call_module("embed", x, info=_act(rows, 16, dtype))
    children: dict[str, Any] = {
        "embed": module("embed", params={"weight": Param("tied", 256, 256 * 4)}, type_name="Linear"),
    }
    layers = {}
    for i in range(blocks):
        kind = rng.choice(["Linear", "GELU", "LayerNorm", "Linear"])
        width = 16
        out = g.call_module(f"layers.{i}", h, info=_act(rows, width, dtype))
        if rng.random() < 0.5:
            out = g.call_function("_operator.add", out, h, info=_act(rows, width, dtype))
        h = out
        n = rng.randint(1, 40) * 16
        params = {"weight": Param(f"w{i}", n, n * 4)} if kind != "GELU" else {}
        if kind == "LayerNorm":
            params = {"weight": Param(f"w{i}", 16, 64), "bias": Param(f"b{i}", 16, 64)}
        layers[str(i)] = module(f"layers.{i}", params=params, type_name=kind)
    h = g.call_function("_operator.add", h, x, info=_act(rows, 16, dtype)) if rng.random() < 0.7 else h
    out = g.call_module("head", h, info=_act(rows, 16, dtype))
    children["layers"] = module("layers", children=layers, type_name="ModuleList")
    children["head"] = module("head", params={"weight": Param("tied", 256, 256 * 4)}, type_name="Linear")
    return Snapshot(module("", g.output(out), children))


def brute_force(snap: Snapshot, stages: int, cap: int, training: Training, cost: Any) -> tuple[Any, ...]:
    """(bottleneck, cuts, peaks) of the best feasible cut set, or (None, smallest peak)."""
    report = balance_report(snap, 1, cost=cost)
    candidates = report.chain.boundaries
    best: tuple[Any, ...] | None = None
    smallest = None
    for chosen in itertools.combinations(range(len(candidates)), stages - 1):
        cuts = [candidates[k] for k in chosen]
        planned = plan(snap, cuts)
        found = figures(
            planned, snap, schedule=training.schedule, microbatches=training.microbatches,
            optimizer=training.optimizer, dtype=training.dtype, ranks=training.ranks,
        )
        assert all(isinstance(s.memory.peak, int) for s in found.stages)
        peaks = tuple(int(s.memory.peak or 0) for s in found.stages)
        worst = max(peaks)
        smallest = worst if smallest is None else min(smallest, worst)
        if worst > cap:
            continue
        bottleneck = _bottleneck(report.chain.segment_costs, chosen)
        key = (bottleneck, chosen)
        if best is None or key < best[:2]:
            best = (bottleneck, chosen, peaks)
    if best is None:
        return (None, smallest)
    return best


def _bottleneck(segments: tuple[float, ...], chosen: tuple[int, ...]) -> float:
    edges = [0, *(k + 1 for k in chosen), len(segments)]
    return max(sum(segments[a:b]) for a, b in zip(edges, edges[1:]))


SETTINGS = [
    Training("1f1b", 4, "adam"),
    Training("gpipe", 3, "sgd"),
    Training("1f1b", 6, "momentum", dtype="bfloat16"),
    Training("interleaved", 4, "adamw", ranks=2),
    Training("zero_bubble", 4, "adam", ranks=2),
]


@pytest.mark.parametrize("seed", range(12))
def test_random_snapshots_match_brute_force(seed: int) -> None:
    rng = random.Random(1000 + seed)
    snap = random_snapshot(seed)
    training = SETTINGS[seed % len(SETTINGS)]
    stages = 4 if training.schedule in ("interleaved", "zero_bubble") else rng.choice([2, 3, 4])
    # caps between the smallest achievable peak and the unconstrained split's peak
    everything = brute_force(snap, stages, 1 << 60, training, costs.params)
    assert everything[0] is not None
    smallest = brute_force(snap, stages, 0, training, costs.params)[1]
    top = max(everything[2])
    for cap in sorted({smallest - 1, smallest, (smallest + top) // 2, top, top + 1000}):
        expected = brute_force(snap, stages, cap, training, costs.params)
        if expected[0] is None:
            with pytest.raises(BalanceError, match=f"smallest achievable peak is .* \\({smallest} bytes"):
                balance_report(snap, stages, cost=costs.params, max_memory=cap, training=training)
            continue
        got = balance_report(snap, stages, cost=costs.params, max_memory=cap, training=training)
        chain = got.chain.boundaries
        assert tuple(chain.index(c) for c in got.cuts) == expected[1], (cap, got.cuts)
        assert max(got.stage_costs) == expected[0]
        assert got.peaks == expected[2]


ZOO = [("gpt", {"n_layers": 6}, 3), ("t5", {"n_layers": 3}, 3), ("gpt", {"n_layers": 5}, 2)]


@pytest.mark.parametrize("name,options,stages", ZOO)
def test_zoo_matches_brute_force(name: str, options: dict[str, Any], stages: int) -> None:
    pytest.importorskip("torch")
    from adapters.examples import build
    from adapters.fx import snapshot

    example = build(name, **options)
    snap = snapshot(example.model, *example.args, **example.kwargs)
    training = Training("1f1b", 8, "adam")
    everything = brute_force(snap, stages, 1 << 60, training, costs.params)
    smallest = brute_force(snap, stages, 0, training, costs.params)[1]
    for cap in (smallest, (smallest + max(everything[2])) // 2):
        expected = brute_force(snap, stages, cap, training, costs.params)
        got = balance_report(snap, stages, cost=costs.params, max_memory=cap, training=training)
        assert tuple(got.chain.boundaries.index(c) for c in got.cuts) == expected[1]
        assert got.peaks == expected[2]
        assert max(got.peaks or ()) <= cap


def test_no_cap_no_change() -> None:
    snap = random_snapshot(3)
    assert balance_report(snap, 3, cost=costs.params).cuts == balance_report(
        snap, 3, cost=costs.params, max_memory=1 << 60
    ).cuts


def test_bad_max_memory() -> None:
    snap = random_snapshot(1)
    with pytest.raises(BalanceError, match="finite number > 0"):
        balance_report(snap, 2, cost=costs.params, max_memory=-1)
    with pytest.raises(TypeError, match="give bytes"):
        balance_report(snap, 2, cost=costs.params, max_memory="80GB")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Training"):
        balance_report(snap, 2, cost=costs.params, max_memory=1e9, training="1f1b")  # type: ignore[arg-type]


def test_missing_value_info_is_an_error() -> None:
    g = GraphBuilder()
    x = g.placeholder("x")
    h = g.call_module("layers.0", x)
    h = g.call_module("layers.1", h)
    layers = {str(i): module(f"layers.{i}", params={"w": Param(f"w{i}", 4, 16)}, type_name="Linear") for i in range(2)}
    snap = Snapshot(module("", g.output(h), {"layers": module("layers", children=layers)}))
    with pytest.raises(BalanceError, match="value info"):
        balance_report(snap, 2, cost=costs.params, max_memory=1e9)


@pytest.mark.parametrize("seed", range(4))
def test_comm_weight_with_a_loose_cap_is_the_plain_optimum(seed: int) -> None:
    snap = random_snapshot(seed)
    plain = balance_report(snap, 3, cost=costs.params, comm_weight=0.5)
    capped = balance_report(snap, 3, cost=costs.params, comm_weight=0.5, max_memory=1 << 60)
    assert capped.cuts == plain.cuts and capped.stage_costs == plain.stage_costs
