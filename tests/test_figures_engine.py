"""Verified, not assumed: the bytes torch.distributed.pipelining really sends between ranks in
one step (every `isend` counted, activations and gradients) equal the hop-by-hop figure of
core.comm, bypass values included, on 2 gloo processes."""

from __future__ import annotations

import dataclasses

import torch

from adapters.examples import build
from adapters.fx import snapshot
from adapters.launch import launch
from adapters.memory.traffic import sent_bytes_many
from adapters.pipelining.check import TrainSpec
from core import plan
from core.comm import stage_comm
from core.schedules import default_ranks, rank_of

GPT = (("n_layers", 4), ("batch", 8))
T5 = (("n_layers", 2), ("batch", 8))
SPECS = [
    TrainSpec("gpt", GPT, ("blocks.1",), "gpipe", steps=2),
    TrainSpec("gpt", GPT, ("blocks.0", "blocks.1", "blocks.2"), "zero_bubble", steps=2, num_microbatches=2),
    # decoder_input_ids rides through both encoder stages to the decoder (a bypass value)
    TrainSpec("t5", T5, ("encoder.block.0", "encoder", "decoder.block.0"), "interleaved", steps=2),
    # an int from .size() crosses as an 8-byte tensor, with no gradient back
    TrainSpec("scalars", (("batch", 8),), ("blocks.0",), "gpipe", steps=2),
]


def predicted(spec: TrainSpec, world: int) -> list[int]:
    """Per rank, the hop-by-hop bytes sent in one step, from a snapshot of one microbatch."""
    options = dict(spec.options)
    options["batch"] = options["batch"] // spec.num_microbatches
    example = build(spec.model, dtype=getattr(torch, spec.dtype), seed=spec.seed, **options)
    planned = plan(snapshot(example.model, *example.args, **example.kwargs), spec.cuts)
    assert default_ranks(spec.kind, len(planned.stages)) == world
    out = [0] * world
    for s, comm in enumerate(stage_comm(planned, spec.num_microbatches)):
        assert comm.send_hops is not None
        out[rank_of(s, world)] += comm.send_hops
    return out


def test_bytes_sent_in_one_step_equal_the_hop_by_hop_figure() -> None:
    results = launch(sent_bytes_many, 2, SPECS, timeout_s=600)
    for i, spec in enumerate(SPECS):
        got = [per_rank[i] for per_rank in results]
        assert got == predicted(spec, 2), spec
        assert sum(got) > 0


def test_direct_sends_cost_less_where_a_value_bypasses() -> None:
    """The t5 plan above: decoder_input_ids crosses two boundaries hop by hop but is read only
    by the decoder, so direct sends save exactly its bytes at the stage in between (the
    encoder output, read by both decoder stages, costs two sends either way)."""
    spec = dataclasses.replace(SPECS[2])
    options = dict(spec.options)
    options["batch"] = 2
    example = build("t5", dtype=torch.float64, **options)
    planned = plan(snapshot(example.model, *example.args, **example.kwargs), spec.cuts)
    comm = stage_comm(planned, 4)
    bypass = planned.stages[1].bypass
    assert "decoder_input_ids" in bypass
    ids = planned.stages[1].graph.node("decoder_input_ids").info
    assert ids is not None and ids.nbytes is not None
    assert comm[1].forwarded == 4 * ids.nbytes  # received only to be sent on, 4 microbatches
    assert [c.forwarded for c in comm] == [0, 4 * ids.nbytes, 0, 0]
    total_hops = sum(c.send_hops or 0 for c in comm)
    total_direct = sum(c.send_direct or 0 for c in comm)
    assert total_hops - total_direct == sum(c.forwarded or 0 for c in comm) == 4 * ids.nbytes
