"""The command line on Hugging Face transformers models: --tracer, --hf-config, and what it
says when a model (or a part of it) cannot be traced.

Every command runs in this process (`adapters.cli.main`), so torch and transformers are
imported once; tests/test_cli.py runs the command as a user does, in subprocesses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from adapters.cli import main
from adapters.cli import model_source, untraced
from adapters.cli.errors import UsageError
from adapters.cli.inspect_command import render_tree
from core import Param, Plan, Snapshot, plan
from core.builder import GraphBuilder, module
from core.errors import CutInsideLeaf
from tests.test_cli import ERROR, assert_table_matches, toy_snapshot

pytest.importorskip("transformers")

HF = "adapters.hf_models:make"
# A Llama config as a checkpoint's config.json has it (float16, a cache), at toy size.
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 4,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": True,
}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`stagecut ARGS` in this process (torch and transformers are imported once): code, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_of_a_transformers_model_is_traced_with_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "plan", "--model", HF, "-o", "name=llama", "--stages", "2", "--json", str(tmp_path / "p.json"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{HF}: LlamaForCausalLM")
    assert lines[1].startswith("traced with export; cuts: after:model.layers.0 (balanced by params into 2")
    expected = Plan.from_json((tmp_path / "p.json").read_text())
    assert expected.tracer == "export" and len(expected.stages) == 2
    assert_table_matches(out, expected, costs=1)
    assert "model.embed_tokens.weight @0, lm_head.weight @1" in out  # the tiny llama ties them


def test_inspect_of_a_transformers_model_shows_its_tracer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "--model", HF, "-o", "name=gpt2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{HF}: GPT2LMHeadModel")
    assert lines[1].startswith("traced with export: ") and lines[1].endswith(" cut points")
    assert any(line.split()[:2] == ["<root>", "GPT2LMHeadModel"] for line in lines)
    # inspect gives no cuts: nothing may say that snapshot(cuts=...) skipped a module
    assert "snapshot(cuts=...)" not in out
    assert untraced.UNDER_LEAF in out  # the modules inside the blocks export kept whole


def test_hf_config_plans_a_config_file_on_the_meta_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoConfig

    from adapters.hf_models import build_on_meta

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(TINY_LLAMA))
    saved = str(tmp_path / "p.json")
    code, out, err = run(capsys, "plan", "--hf-config", str(tmp_path / "llama"), "--stages", "2", "-o", "seq=16", "--json", saved)
    assert code == 0, err
    assert err == f"stagecut: wrote plan {saved}\n"
    lines = out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'llama'}: LlamaForCausalLM on the meta device") and lines[0].endswith(", float16")
    assert lines[1].startswith("traced with export; cuts: after:model.layers.1 (balanced by params into 2")
    expected = Plan.from_json((tmp_path / "p.json").read_text())
    assert_table_matches(out, expected, costs=1)
    # The config's dtype (float16): two bytes a parameter, counted without any memory for them.
    config = AutoConfig.for_model(**{**TINY_LLAMA, "use_cache": False})
    model = build_on_meta(config).model
    assert next(model.parameters()).dtype == torch.float16
    assert sum(s.figures.param_bytes for s in expected.stages) == 2 * sum(p.numel() for p in model.parameters())
    # -o seq=16: the inputs are input_ids and attention_mask of (2, 16) int64; float16 hidden states
    first = expected.stages[0].graph
    tensors = [n.info.nbytes for n in first.placeholders if n.info is not None and n.info.kind == "tensor"]
    assert sum(tensors) == 2 * (2 * 16 * 8)  # (the rest: the forward's unpassed scalar defaults)
    assert expected.stages[0].figures.bytes_out >= 2 * 16 * 64 * 2


def test_inspect_exits_2_when_the_root_cannot_be_traced(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "--model", HF, "-o", "name=llama", "--tracer", "fx")
    assert code == 2 and not out
    assert ERROR.match(err), err
    for words in ("the root module (LlamaForCausalLM) could not be traced", "fx could not trace it", "--tracer export"):
        assert words in err


# -- errors, and snapshots made by hand


def test_without_transformers_hf_config_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    for args in (["plan", "--hf-config", str(tmp_path / "config.json"), "--stages", "2"],
                 ["inspect", "--hf-config", str(tmp_path)],
                 ["plan", "--model", HF]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert ERROR.match(err) and "pip install 'stagecut[hf]'" in err, err


def test_bad_hf_config_arguments_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    (tmp_path / "untyped.json").write_text(json.dumps({"hidden_size": 8}))
    (tmp_path / "alien.json").write_text(json.dumps({"model_type": "no-such-model"}))
    (tmp_path / "toy.json").write_text(toy_snapshot().to_json())
    config = str(tmp_path / "config.json")
    bad = {
        "both models": (["plan", "--hf-config", config, "--model", "gpt"], "--hf-config and --model"),
        "snapshot and config": (["plan", "--snapshot", str(tmp_path / "toy.json"), "--hf-config", config], "--snapshot replaces"),
        "snapshot and tracer": (["inspect", "--snapshot", str(tmp_path / "toy.json"), "--tracer", "fx"], "--snapshot replaces"),
        "other options": (["plan", "--hf-config", config, "-o", "n_layers=2"], "-o batch=N and -o seq=N"),
        "bad seq": (["plan", "--hf-config", config, "-o", "seq=0"], "positive integer"),
        "measured on meta": (["plan", "--hf-config", config, "--stages", "2", "--cost", "measured"], "meta device"),
        "missing": (["plan", "--hf-config", str(tmp_path / "nope.json")], "cannot read transformers config"),
        "no model_type": (["plan", "--hf-config", str(tmp_path / "untyped.json")], 'no "model_type" field'),
        "unknown model_type": (["plan", "--hf-config", str(tmp_path / "alien.json")], "no-such-model"),
    }
    for name, (args, words) in bad.items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert ERROR.match(err) and words in err, (name, err)
    with pytest.raises(SystemExit):
        main(["plan", "--tracer", "jit"])
    assert "invalid choice: 'jit'" in capsys.readouterr().err


def test_a_factorys_value_error_for_its_options_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown Hugging Face model 'unknown'.*\(ValueError at hf_models\.py:\d+, with -o name='unknown'\)"):
        model_source.load(HF, {"name": "unknown"})
    (tmp_path / "broken.py").write_text("def make(width=8):\n    raise ValueError('a bug, not an option')\n")
    with pytest.raises(UsageError, match="a bug, not an option"):
        model_source.load(f"{tmp_path / 'broken.py'}:make", {"width": 3})
    with pytest.raises(ValueError, match="a bug, not an option"):  # no options to blame: the traceback stays
        model_source.load(f"{tmp_path / 'broken.py'}:make", {})


def test_a_snapshot_file_shows_its_tracer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toy = toy_snapshot()
    (tmp_path / "toy.json").write_text(Snapshot(toy.root, "export").to_json())
    (tmp_path / "plain.json").write_text(toy.to_json())
    assert main(["inspect", "--snapshot", str(tmp_path / "toy.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("traced with export: 1 module, 6 leaves")
    assert main(["plan", "--snapshot", str(tmp_path / "toy.json"), "--cut", "blocks.1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "traced with export; cuts: after:blocks.1 (given with --cut)"
    assert main(["plan", "--snapshot", str(tmp_path / "plain.json"), "--cut", "blocks.1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "cuts: after:blocks.1 (given with --cut)"  # no tracer recorded


def test_a_snapshot_file_with_an_untraced_root_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = module("", None, {"a": module("a", leaf_reason="x")}, type_name="Net", leaf_reason="fx could not trace it: E")
    (tmp_path / "s.json").write_text(Snapshot(root, "fx").to_json())
    for command in ("inspect", "plan"):
        assert main([command, "--snapshot", str(tmp_path / "s.json")]) == 2
        err = capsys.readouterr().err
        assert ERROR.match(err) and "root module (Net) could not be traced" in err and "fx could not trace it: E" in err


# -- a module that fx cannot trace, below the root


class Mid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mid = Mid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: fx cannot trace this module
            return self.mid(x)
        return -self.mid(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Branchy() for _ in range(3)])
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_what_lies_below_a_module_that_failed_is_blamed_on_it() -> None:
    from adapters.fx import snapshot

    snap = snapshot(Net(), torch.randn(2, 4), tracer="fx")
    assert snap.tracer == "fx" and snap.modules["layers.0"].leaf_reason.startswith(untraced.FAILED)  # type: ignore[union-attr]
    assert untraced.is_generic(snap.modules["layers.0.mid"].leaf_reason)  # what the frontend says
    tree = render_tree(snap)
    assert "snapshot(cuts=...)" not in tree and "never called" not in tree
    assert f"(2) {untraced.UNDER_FAILED}: 9" in tree  # mid, a, b in each of the three layers
    # core names the innermost untraced module with a reason: layers.0.mid, whose cut fails too
    with pytest.raises(CutInsideLeaf) as raised:
        plan(snap, ["layers.0.mid.a"])
    better = untraced.blame(snap, raised.value)
    assert better.leaf == "layers.0" and "fx could not trace it: TraceError" in str(better)
    assert f"cut at 'layers.0' itself" in str(better)


def test_the_generic_reasons_are_the_frontends() -> None:
    from adapters.fx.entry import FX_FAILED
    from adapters.graph.module_tree import NOT_ON_SPINE

    assert NOT_ON_SPINE.startswith(untraced.GENERIC[0]) and FX_FAILED.startswith(untraced.FAILED[0])


def test_a_leaf_by_choice_keeps_its_reason_and_what_is_inside_it_says_so() -> None:
    g = GraphBuilder()
    inner = {"a": module("enc.a", leaf_reason="not traced: snapshot(cuts=...) traces only the modules on the way to a cut")}
    enc = module("enc", None, inner, params={"w": Param("w", 4, 16)}, leaf_reason="listed in leaf_modules")
    snap = Snapshot(module("", g.output(g.call_module("enc", g.placeholder("x"))), {"enc": enc}), "fx")
    tree = render_tree(snap)
    assert "listed in leaf_modules: 1" in tree and f"{untraced.UNDER_LEAF}: 1" in tree
