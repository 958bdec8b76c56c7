"""Shared helpers for the fx adapter tests (no tests here).

Examples and their snapshots are cached per process: tracing and fake-tensor propagation are
the slow part, and hypothesis draws many cut sets per model. Every test that runs a backward
pass clears the gradients it made (`grads` does), so the cached models stay clean.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from adapters.examples import Example, build
from adapters.fx import run_stages, snapshot, stage_modules
from core import Cut, Plan, Snapshot
from core.validate import call_sites

NAMES = ("gpt", "t5", "structured", "slapo_seq", "slapo_list", "scalars")
SIDES = ("after", "before")


@functools.cache
def example(name: str, **options: Any) -> Example:
    """The example in float64 (built once per process; options as sorted keyword pairs)."""
    return build(name, dtype=torch.float64, **options)


@functools.cache
def traced(name: str) -> Snapshot:
    """The full snapshot of `example(name)`, with value info from its example inputs."""
    ex = example(name)
    return snapshot(ex.model, *ex.args, **ex.kwargs)


def cut_points(snap: Snapshot) -> list[str]:
    """Paths of call_module nodes called exactly once in the traced graphs: valid cut points."""
    return sorted(path for path, sites in call_sites(snap).items() if len(sites) == 1)


def cut_sets(points: list[str], max_cuts: int = 5) -> st.SearchStrategy[list[Cut]]:
    """Random cut sets: distinct (path, side) pairs, so both sides of one path may appear."""
    pairs = st.tuples(st.sampled_from(points), st.sampled_from(SIDES))
    return st.lists(pairs, max_size=max_cuts, unique=True).map(
        lambda chosen: [Cut(path, side) for path, side in chosen]  # type: ignore[arg-type]
    )


# -- comparing outputs ------------------------------------------------------------------------


def leaves(value: Any) -> Iterator[Any]:
    """The leaves of an output tree (tuples, lists, dicts), in a fixed order."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from leaves(item)
    elif isinstance(value, dict):
        for key in value:
            yield from leaves(value[key])
    else:
        yield value


def assert_same_tree(actual: Any, expected: Any, where: str = "output") -> None:
    """Same structure; tensors `torch.equal` (and same dtype), anything else `==`."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_tree(a, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same_tree(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), f"{where}: values differ"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def loss_fn(reference: Any, seed: int = 1234) -> Callable[[Any], torch.Tensor]:
    """A scalar function of an output tree: every float tensor leaf times fixed random weights."""
    gen = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(leaf.shape, generator=gen, dtype=leaf.dtype)
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
        else None
        for leaf in leaves(reference)
    ]

    def loss(output: Any) -> torch.Tensor:
        terms = [(leaf * w).sum() for leaf, w in zip(leaves(output), weights) if w is not None]
        return torch.stack(terms).sum()

    return loss


def grads(model: nn.Module, run: Callable[[], Any], loss: Callable[[Any], torch.Tensor]) -> dict[str, Any]:
    """Gradients of every parameter (by every name) after `loss(run()).backward()`; then cleared."""
    model.zero_grad(set_to_none=True)
    loss(run()).backward()  # type: ignore[no-untyped-call]
    out = {
        name: None if p.grad is None else p.grad.clone()
        for name, p in model.named_parameters(remove_duplicate=False)
    }
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for name, g in expected.items():
        if g is None:
            assert actual[name] is None, name
        else:
            assert actual[name] is not None, name
            assert torch.equal(actual[name], g), f"gradient of {name} differs"


def check_staged_run(plan: Plan, ex: Example) -> list[Any]:
    """Stage modules of `plan` equal the model forward (exactly) and backward (exactly)."""
    modules = stage_modules(plan, ex.model)
    assert len(modules) == len(plan.stages)
    with torch.no_grad():
        expected = ex.model(*ex.args, **ex.kwargs)
        actual = run_stages(modules, *ex.args, **ex.kwargs)
    assert_same_tree(actual, expected)
    loss = loss_fn(expected)
    plain = grads(ex.model, lambda: ex.model(*ex.args, **ex.kwargs), loss)
    staged = grads(ex.model, lambda: run_stages(modules, *ex.args, **ex.kwargs), loss)
    assert_same_grads(staged, plain)
    return modules


def stage_values(modules: list[Any], ex: Example) -> list[Any]:
    """What each stage returns, in order, when run on the example (no grad)."""
    values = []
    with torch.no_grad():
        out = modules[0](*ex.args, **ex.kwargs)
        values.append(out)
        for module in modules[1:]:
            out = module(*out)
            values.append(out)
    return values


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster, and far faster on a loaded machine.

    Import this into a test module to make it autouse there; the old setting comes back after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
