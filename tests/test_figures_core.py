"""core.figures, core.memory and core.comm without torch: the bytes per parameter for each
optimizer and dtype, ties and buffers, hop-by-hop against direct traffic with a bypass value,
how the peak is put together, per-rank peaks, and the errors."""

from __future__ import annotations

import json

import pytest

from core import plan
from core.builder import GraphBuilder, module
from core.comm import stage_comm
from core.figures import figures
from core.graph import ValueInfo
from core.memory import FiguresError, param_bytes, stage_weights
from core.schedules import ScheduleError
from core.snapshot import Param, Snapshot


def act(width: int = 16, dtype: str = "float32") -> ValueInfo:
    size = {"float32": 4, "bfloat16": 2, "int64": 8}[dtype]
    return ValueInfo("tensor", (4, width), dtype, 4 * width * size)


def snap() -> Snapshot:
    """ids -> embed -> layers.0..3 (Linear) -> add(ids-derived skip) -> head; the embedding
    and the head share one weight; layers.1 has a buffer."""
    g = GraphBuilder()
    ids = g.placeholder("ids", info=act(16, "int64"))
    h = g.call_module("embed", ids, info=act())
    skip = h
    for i in range(4):
        h = g.call_module(f"layers.{i}", h, info=act())
    h = g.call_function("_operator.add", h, skip, info=act())
    out = g.call_module("head", h, info=act())
    layers = {
        str(i): module(
            f"layers.{i}",
            params={"weight": Param(f"w{i}", 256, 1024), **({"running": Param("r1", 16, 64, buffer=True)} if i == 1 else {})},
            type_name="Linear",
        )
        for i in range(4)
    }
    return Snapshot(module("", g.output(out), {
        "embed": module("embed", params={"weight": Param("tied", 1024, 4096)}, type_name="Embedding"),
        "layers": module("layers", children=layers, type_name="ModuleList"),
        "head": module("head", params={"weight": Param("tied", 1024, 4096)}, type_name="Linear"),
    }))


@pytest.mark.parametrize(
    "optimizer,dtype,per_element",
    [
        ("sgd", None, 4 + 4), ("momentum", None, 12), ("adam", None, 16), ("adamw", "float32", 16),
        ("sgd", "bfloat16", 2 + 2 + 4), ("momentum", "float16", 12), ("adam", "bfloat16", 16), ("adam", "float64", 32),
    ],
)
def test_bytes_per_parameter(optimizer: str, dtype: str | None, per_element: int) -> None:
    weights, buffers, grads, state = param_bytes(Param("k", 10, 40), optimizer, dtype)
    assert buffers == 0 and weights + grads + state == 10 * per_element
    assert param_bytes(Param("b", 10, 40, buffer=True), optimizer, dtype) == (0, 40, 0, 0)


def test_16_bit_model_is_mixed_precision() -> None:
    assert sum(param_bytes(Param("k", 10, 20), "adam", None)) == 10 * 16  # a bfloat16 model's own dtype


def test_ties_count_once_per_stage_and_buffers_once() -> None:
    s = snap()
    whole = stage_weights(plan(s), s, optimizer="sgd")
    assert whole[0].params == 1024 + 4 * 256  # the tied weight once
    assert whole[0].buffers == 64
    split = stage_weights(plan(s, ["layers.1"]), s, optimizer="sgd")
    assert split[0].params == 1024 + 2 * 256 and split[1].params == 1024 + 2 * 256  # a copy each


def test_hops_and_direct_with_a_bypass() -> None:
    s = snap()
    planned = plan(s, ["layers.0", "layers.1", "layers.2"])
    comm = stage_comm(planned, 3)
    h = act().nbytes
    assert h is not None
    # the skip (embed's output) is made in stage 0 and read in stage 3: two stages pass it on
    assert [c.forwarded for c in comm] == [0, 3 * 2 * h, 3 * 2 * h, 0]
    hops = sum(c.send_hops or 0 for c in comm)
    direct = sum(c.send_direct or 0 for c in comm)
    assert hops - direct == 2 * 3 * 2 * h  # two extra hops, value and gradient, 3 microbatches
    assert sum(c.send_hops or 0 for c in comm) == sum(c.recv_hops or 0 for c in comm)
    assert sum(c.send_direct or 0 for c in comm) == sum(c.recv_direct or 0 for c in comm)


def test_peak_is_the_sum_of_its_parts() -> None:
    s = snap()
    planned = plan(s, ["layers.0", "layers.1", "layers.2"])
    found = figures(planned, s, schedule="1f1b", microbatches=6, optimizer="adam")
    for stage in found.stages:
        m = stage.memory
        assert m.peak == m.weights.total + (m.receive_buffers or 0) + m.in_flight * (m.activations or 0)
    assert [s.memory.in_flight for s in found.stages] == [4, 3, 2, 1]
    assert found.peak == max(p or 0 for p in found.rank_peaks)
    doc = json.dumps(found.to_dict(), allow_nan=False)
    assert json.loads(doc)["stages"][3]["in_flight"] == 1


def test_rank_peaks_with_two_stages_per_rank() -> None:
    s = snap()
    planned = plan(s, ["layers.0", "layers.1", "layers.2"])
    found = figures(planned, s, schedule="interleaved", microbatches=4)
    assert found.ranks == 2
    for r, peak in enumerate(found.rank_peaks):
        mine = [st for st in found.stages if st.rank == r]
        assert peak is not None
        assert max(st.memory.peak or 0 for st in mine) <= peak <= sum(st.memory.peak or 0 for st in mine)


def test_time_with_costs_and_bandwidth() -> None:
    s = snap()
    planned = plan(s, ["layers.1"])
    slow = figures(planned, s, schedule="gpipe", microbatches=4, forward=[1.0, 1.0], backward=[2.0, 2.0], bandwidth=1.0)
    fast = figures(planned, s, schedule="gpipe", microbatches=4, forward=[1.0, 1.0], backward=[2.0, 2.0], bandwidth=1e12)
    assert slow.step_seconds is not None and fast.step_seconds is not None
    assert fast.step_seconds == pytest.approx(15.0, rel=1e-6)  # (m + p - 1) x (1 + 2)
    assert slow.step_seconds > fast.step_seconds
    assert figures(planned, s, schedule="gpipe", microbatches=4).step_seconds is None


def test_errors() -> None:
    s = snap()
    planned = plan(s, ["layers.1"])
    with pytest.raises(FiguresError, match="optimizer"):
        figures(planned, s, optimizer="lion")
    with pytest.raises(FiguresError, match="dtype"):
        figures(planned, s, dtype="int8")
    with pytest.raises(FiguresError, match="bandwidth"):
        figures(planned, s, bandwidth=0)
    with pytest.raises(FiguresError, match="one per stage"):
        figures(planned, s, forward=[1.0], backward=[1.0, 1.0])
    with pytest.raises(ScheduleError, match="microbatches"):
        figures(planned, s, schedule="1f1b", microbatches=1)
    with pytest.raises(TypeError, match="core.Plan"):
        figures(s, s)  # type: ignore[arg-type]
