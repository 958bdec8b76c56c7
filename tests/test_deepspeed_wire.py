"""DeepSpeed's boundary packing, in one process: every kind of value survives the trip, only
gradient-carrying floats travel as floats, the buffer-pool padding, the zero-gradient anchor."""

from __future__ import annotations

import torch
from torch import fx, nn

from adapters.deepspeed.config import ds_config
from adapters.deepspeed.wire import BYTES, Packing, _pads, anchor
from adapters.engine.codec import decode_node, encode, encode_node, wire_format


def _round_trip(values: list[object], grads: list[bool]) -> tuple[Packing, list[object], tuple[torch.Tensor, ...]]:
    formats = [wire_format(v, f"v{i}") for i, v in enumerate(values)]
    encoded = [encode(v, f, torch.device("cpu")) for v, f in zip(values, formats)]
    packing = Packing.of(encoded, formats, grads)
    sender = fx.Graph()
    nodes = [sender.placeholder(f"v{i}") for i in range(len(values))]
    sender.output(tuple(packing.pack(sender, [encode_node(sender, n, f, torch.device("cpu")) if f.travels else None
                                             for n, f in zip(nodes, formats)])))
    packs = fx.GraphModule(nn.Module(), sender)(*values)
    receiver = fx.Graph()
    wire = [receiver.placeholder(f"p{i}") for i in range(len(packing.packs))]
    receiver.output(tuple(packing.unpack(receiver, wire)))
    return packing, list(fx.GraphModule(nn.Module(), receiver)(*packs)), tuple(packs)


def test_every_kind_of_value_survives_the_trip() -> None:
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) * 1
    norm = h.norm()
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float32)  # a float without gradient
    ids = torch.arange(6).view(2, 3)
    values: list[object] = [ids, h, None, True, 2.5, 7, torch.Size([2, 3]), (4, 5), mask, torch.ones(2, dtype=torch.bool), norm]
    grads = [False, True, False, False, False, False, False, False, False, False, True]
    packing, got, packs = _round_trip(values, grads)
    assert packing.float_packs == 1 and [p.dtype for p in packs] == [torch.float64, BYTES]
    assert packs[0].numel() == 6 + 1  # h and the 0-d norm; everything else is bytes
    for want, have in zip(values, got):
        if isinstance(want, torch.Tensor):
            assert isinstance(have, torch.Tensor) and have.dtype == want.dtype and torch.equal(have, want.detach())
        else:
            assert have == want and type(have) is type(want)


def test_gradients_flow_through_the_float_pack() -> None:
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    _, got, packs = _round_trip([h * 1, torch.tensor(3)], [True, False])
    assert packs[0].requires_grad and not packs[1].requires_grad
    out = got[0]
    assert isinstance(out, torch.Tensor)
    out.sum().backward()
    assert h.grad is not None and torch.equal(h.grad, torch.ones_like(h))


def test_bytes_stay_aligned_for_every_dtype() -> None:
    values: list[object] = [torch.ones(3, dtype=torch.bool), torch.arange(3, dtype=torch.int16), torch.arange(5),
                            torch.arange(3, dtype=torch.float32), torch.tensor(1.5, dtype=torch.float64)]
    packing, got, _ = _round_trip(values, [False] * len(values))
    for slot in packing.slots:
        assert slot is not None and slot.offset % torch.empty(0, dtype=slot.dtype).element_size() == 0
    assert all(torch.equal(a, b) for a, b in zip(values, got))  # type: ignore[arg-type]


def test_a_float_pack_outgrows_a_received_buffer_of_another_dtype() -> None:
    # A stage receiving 64 bytes and sending 10 float32s: the engine would hand it a view of its
    # uint8 receive buffer as the gradient buffer; one element more than 64 makes it allocate.
    received = Packing.of([torch.zeros(8, dtype=torch.int64)], [wire_format(torch.zeros(1), "ids")], [False])
    assert received.packs == ((BYTES, 64),)
    out = [torch.zeros(10)]
    assert _pads(received, out, [True]) == [55]
    same = Packing.of([torch.zeros(100)], [wire_format(torch.zeros(1), "h")], [True])
    assert _pads(same, out, [True]) == [0]  # same dtype: a view is right


def test_anchor_gives_tied_tensors_a_zero_gradient() -> None:
    carrier = torch.randn(3, requires_grad=True)
    ignored = torch.randn(2, 2, requires_grad=True)
    (anchor(carrier * 2, ignored).sum()).backward()
    assert carrier.grad is not None and torch.equal(carrier.grad, torch.full((3,), 2.0))
    assert ignored.grad is not None and torch.equal(ignored.grad, torch.zeros(2, 2))


def test_the_config_turns_off_what_changes_results() -> None:
    config = ds_config(micro_batch_size=2, num_microbatches=4)
    assert config["gradient_clipping"] == 0.0
    assert config["train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 4
    assert config["pipeline"]["use_reentrant"] is False
    assert ds_config(micro_batch_size=2, num_microbatches=4, activation_checkpointing=True)["pipeline"]["activation_checkpoint_interval"] == 1
    assert ds_config(micro_batch_size=1, num_microbatches=1, overrides={"gradient_clipping": 1.0})["gradient_clipping"] == 1.0


def test_decode_node_is_shared_with_the_pipelining_codec() -> None:
    import adapters.pipelining.codec as pipelining_codec

    assert pipelining_codec.decode_node is decode_node
