"""Loaded JSON never runs code (issue 13): a plan or snapshot read from JSON names functions,
methods, attributes and constants that are checked against an allow-list before any stage is
built; in-process snapshots resolve as they always did. See docs/security.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from adapters.examples import build
from adapters.fx import run_stages, snapshot, stage_modules
from adapters.graph.handles import UnresolvedHandle, UntrustedTarget, admit_graph
from core import Graph, Node, Plan, Ref, Snapshot, plan
from core.builder import GraphBuilder, module


@pytest.fixture(scope="module")
def gpt() -> Any:
    example = build("gpt", n_layers=2)
    return example, plan(snapshot(example.model, *example.args), ["blocks.0"])


def _with_node(plan_json: str, node: dict[str, Any], stage: int = 1) -> str:
    """The plan with `node` computed just before the stage's output."""
    doc = json.loads(plan_json)
    graph = doc["stages"][stage]["graph"]
    graph.insert(len(graph) - 1, node)
    return json.dumps(doc)


def test_a_plan_calling_os_system_is_refused_before_anything_runs(gpt: Any, tmp_path: Path) -> None:
    example, result = gpt
    marker = tmp_path / "pwned"
    for target in ("os.system", "posix.system", "subprocess.getoutput", "builtins.exec", "torch.load",
                   "torch.save", "torch.ops.aten.save.default", "torch.from_file"):
        text = _with_node(result.to_json(), {"name": "evil", "op": "call_function", "target": target,
                                             "args": [f"touch {marker}"]})
        with pytest.raises(UntrustedTarget) as info:
            stage_modules(Plan.from_json(text), example.model)
        message = str(info.value)
        assert "stage 1, node 'evil'" in message and repr(target) in message
        assert "trusted_modules=" in message  # how to allow it
    assert not marker.exists()


def test_a_refused_target_is_not_even_imported(gpt: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example, result = gpt
    marker = tmp_path / "imported"
    (tmp_path / "stagecut_probe_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\ndef run(*args):\n    return args\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    text = _with_node(result.to_json(), {"name": "evil", "op": "call_function", "target": "stagecut_probe_evil.run",
                                         "args": [{"ref": "blocks_0"}]}, stage=0)
    with pytest.raises(UntrustedTarget, match="'stagecut_probe_evil.run' is not on the allow-list"):
        stage_modules(Plan.from_json(text), example.model)
    assert "stagecut_probe_evil" not in sys.modules
    assert not marker.exists()


def test_a_snapshot_read_from_json_makes_plans_that_are_checked_too(gpt: Any, tmp_path: Path) -> None:
    example, _ = gpt
    marker = tmp_path / "pwned"
    doc = json.loads(snapshot(example.model, *example.args).to_json())
    graph = doc["root"]["graph"]
    graph.insert(len(graph) - 1, {"name": "evil", "op": "call_function", "target": "os.system", "args": [f"touch {marker}"]})
    loaded = Snapshot.from_json(json.dumps(doc))
    result = plan(loaded, ["blocks.0"])
    assert loaded.origin == "json" and result.origin == "json"
    with pytest.raises(UntrustedTarget, match="'os.system' is not on the allow-list"):
        stage_modules(result, example.model)
    assert not marker.exists()


EVASIONS = [
    ({"op": "call_method", "target": "__class__", "args": [{"ref": "blocks_0"}]}, "is private"),
    ({"op": "call_method", "target": "numpy", "args": [{"ref": "blocks_0"}]}, "reaches files, memory, hooks or frames"),
    ({"op": "call_method", "target": "register_hook", "args": [{"ref": "blocks_0"}, 1]}, "reaches files"),
    ({"op": "call_function", "target": "builtins.getattr", "args": [{"ref": "blocks_0"}, "__globals__"]}, "is private"),
    ({"op": "call_function", "target": "builtins.getattr", "args": [{"ref": "blocks_0"}, "gi_frame"]}, "reaches files"),
    ({"op": "call_function", "target": "builtins.getattr", "args": [{"ref": "blocks_0"}, {"ref": "blocks_0"}]},
     "constant string"),
    ({"op": "call_function", "target": "_operator.add", "args": [{"ref": "blocks_0"}, {"opaque": "handle:0"}]},
     "a handle into the memory of the process that traced"),
    ({"op": "call_function", "target": "_operator.add", "args": [{"ref": "blocks_0"}, {"opaque": "dtype:os"}]},
     "not a dtype, device"),
    ({"op": "get_attr", "target": "blocks.__class__"}, "special or denied name"),
    ({"op": "call_function", "target": "torch.ops.higher_order.cond", "args": []}, "not on the allow-list"),
]


@pytest.mark.parametrize("node, expected", EVASIONS, ids=[f"{n['op']}-{n['target']}" for n, _ in EVASIONS])
def test_reflection_and_foreign_constants_are_refused(gpt: Any, node: dict[str, Any], expected: str) -> None:
    example, result = gpt
    text = _with_node(result.to_json(), {"name": "evil", **node}, stage=0)
    with pytest.raises(UntrustedTarget, match=expected):
        stage_modules(Plan.from_json(text), example.model)


def test_names_that_would_be_written_into_code_are_refused_when_read() -> None:
    from core import MalformedSnapshot

    g = GraphBuilder()
    doc = json.loads(Snapshot(module("", g.output(g.placeholder("x")))).to_json())
    doc["root"]["graph"][0]["target"] = "x=__import__('os').system('id')"
    with pytest.raises(MalformedSnapshot, match="must be a Python identifier"):
        Snapshot.from_json(json.dumps(doc))


def _basename_plan() -> Plan:
    """An in-process plan calling a function that is not on the allow-list."""
    x = Node("x", "placeholder", "x")
    name = Node("name", "call_function", "posixpath.basename", (Ref("x"),))
    graph = Graph((x, name, Node("output", "output", "output", (Ref("name"),))))
    return plan(Snapshot(module("", graph)), [])


def test_in_process_graphs_resolve_as_before_and_the_same_from_json_is_refused() -> None:
    model = nn.Module()
    in_process = _basename_plan()
    assert in_process.origin == "process"
    assert run_stages(stage_modules(in_process, model), "a/b") == "b"
    loaded = Plan.from_json(in_process.to_json())
    with pytest.raises(UntrustedTarget, match="posixpath"):
        stage_modules(loaded, model)
    assert run_stages(stage_modules(loaded, model, trusted_modules=["posixpath"]), "a/b") == "b"


def test_trusted_modules_allow_their_own_functions_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stagecut_probe_trusted.py").write_text("from os import system\ndef double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, outcome in (("stagecut_probe_trusted.double", 42), ("stagecut_probe_trusted.system", None)):
        x = Node("x", "placeholder", "x")
        call = Node("y", "call_function", target, (Ref("x"),))
        graph = Graph((x, call, Node("output", "output", "output", (Ref("y"),))), origin="json")
        if outcome is None:  # os.system imported by a trusted module is still not trusted
            with pytest.raises(UntrustedTarget, match="defined in 'posix'"):
                admit_graph(graph, first=True, trusted_modules=["stagecut_probe_trusted"])
        else:
            resolved = admit_graph(graph, first=True, trusted_modules=["stagecut_probe_trusted"])
            assert resolved is not None and resolved[target](21) == outcome


def test_exported_and_transformers_plans_read_from_json_still_build() -> None:
    pytest.importorskip("transformers")
    from adapters.hf_models import build as build_hf

    example = build_hf("gpt2")
    result = plan(snapshot(example.model, *example.args, tracer="export", **example.kwargs), ["transformer.h.0"])
    targets = {n.target for s in result.stages for n in s.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("torch.ops.aten.") for t in targets)
    assert any(t.startswith("transformers.modeling_outputs.") for t in targets)
    loaded = Plan.from_json(result.to_json())
    expected = example.model(*example.args, **example.kwargs)
    actual = run_stages(stage_modules(loaded, example.model), *example.args, **example.kwargs)
    assert (actual.logits - expected.logits).abs().max() == 0


def test_malformed_opaque_tokens_never_reach_getattr_on_torch() -> None:
    from adapters.graph.handles import resolve_opaque
    from core import Opaque

    for token in ("dtype:os", "torch:load", "dtype:__builtins__", "device:nonsense", "what:ever"):
        with pytest.raises(UnresolvedHandle):
            resolve_opaque(Opaque(token))
