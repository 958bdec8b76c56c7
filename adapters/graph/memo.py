"""Reuse the fake-tensor result of a leaf call for the next call that must give the same shapes.

Deep models repeat one block many times, and running every block on fake tensors is most of
the cost of a snapshot with value info. A leaf call's output shapes depend only on what the
key below holds: the types of its module tree, their parameters' and buffers' metadata, the
training flags, the attributes (simple values by value, other objects by identity), and the
inputs' structure and metadata. A module tree with forward hooks, or a call with inputs other
than tensors and simple values, is not memoized and runs as before; a call that raised is
never recorded.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.utils._pytree import tree_flatten, tree_unflatten

from adapters.graph.module_tree import walk_modules

MISSING: Final[Any] = object()  # what `LeafMemo.get` returns for an unknown key

_SCALARS = (type(None), bool, int, float, str, torch.dtype, torch.device)
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_FORWARD_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class LeafMemo:
    """(module structure, input metadata) -> the output's structure and tensor metadata.

    With `symbolic=True` (the export frontend), symbolic sizes are keyed by their expression,
    so blocks called on the same symbolic batch share one result."""

    def __init__(self, symbolic: bool = False) -> None:
        self.symbolic = symbolic
        self._structures: dict[int, Hashable | None] = {}
        self._outputs: dict[Hashable, tuple[Any, list[Any]]] = {}
        self.enabled = not any(getattr(module_globals, name, None) for name in _GLOBAL_HOOKS)

    def key(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
        if not self.enabled:
            return None
        structure = self._structures.get(id(module), MISSING)
        if structure is MISSING:
            structure = self._structures[id(module)] = _structure(module)
        if structure is None:
            return None
        inputs = _metadata((args, kwargs), self.symbolic)
        return None if inputs is None else (structure, inputs)

    def get(self, key: Hashable) -> Any:
        """A fresh output (fake tensors under the active fake mode) for `key`, or `MISSING`."""
        found = self._outputs.get(key)
        if found is None:
            return MISSING
        spec, leaves = found
        return tree_unflatten([_rebuild(leaf) for leaf in leaves], spec)

    def put(self, key: Hashable, output: Any) -> None:
        leaves, spec = tree_flatten(output)
        described = [_describe(leaf, self.symbolic) for leaf in leaves]
        if all(d is not None for d in described):
            self._outputs[key] = (spec, described)


def _structure(module: nn.Module) -> Hashable | None:
    parts: list[Hashable] = []
    for name, sub in walk_modules(module, remove_duplicate=False):
        if any(getattr(sub, hooks, None) for hooks in _FORWARD_HOOKS):
            return None
        attrs = []
        for attr, value in vars(sub).items():
            if attr in _MODULE_INTERNALS or attr in _INDEX_ONLY:
                continue
            # Other objects (a shared config, a function) count by identity: blocks that hold
            # the same object still match, blocks that hold their own never do.
            if attr == "forward" and hasattr(value, "__wrapped__"):
                # A forward wrapped per instance (the export capture's): what it runs counts.
                value = getattr(value.__wrapped__, "__func__", value.__wrapped__)
            attrs.append((attr, _freeze(value) if _simple(value) else ("object", id(value))))
        tensors = [
            (kind, local, None if t is None else _tensor_meta(t))
            for kind, table in (("p", sub._parameters), ("b", sub._buffers))
            for local, t in table.items()
        ]
        parts.append((name, type(sub), sub.training, tuple(attrs), tuple(tensors)))
    return tuple(parts)


def _simple(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (tuple, list)):
        return all(_simple(v) for v in value)
    if isinstance(value, dict):
        return all(_simple(k) and _simple(v) for k, v in value.items())
    return False


def _freeze(value: Any) -> Hashable:
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((_freeze(k), _freeze(v)) for k, v in value.items()))
    return (type(value).__name__, value)


# A block's position in the stack (transformers' `layer_idx`) selects a cache slot, never a
# shape: leaving it out of the key lets the blocks of a stack share one result.
_INDEX_ONLY = frozenset({"layer_idx"})


def _tensor_meta(t: torch.Tensor) -> Hashable:
    if all(type(d) is int for d in t.shape):
        return (tuple(t.shape), t.stride(), t.dtype, t.device.type, t.requires_grad)
    return (tuple(map(str, t.shape)), tuple(map(str, t.stride())), t.dtype, t.device.type, t.requires_grad)


def _metadata(tree: Any, symbolic: bool = False) -> Hashable | None:
    leaves, spec = tree_flatten(tree)
    out: list[Hashable] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if not symbolic and not all(type(d) is int for d in leaf.shape):
                return None  # symbolic sizes
            out.append(_tensor_meta(leaf))
        elif _simple(leaf):
            out.append(_freeze(leaf))
        else:
            return None
    return tuple(out)


def _describe(leaf: Any, symbolic: bool = False) -> Any:
    if isinstance(leaf, torch.Tensor):
        if not symbolic and not all(type(d) is int for d in leaf.shape):
            return None
        return ("tensor", tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device)
    if _simple(leaf):
        return ("value", leaf)
    return None


def _rebuild(described: Any) -> Any:
    if described[0] == "tensor":
        _, shape, stride, dtype, device = described
        return torch.empty_strided(shape, stride, dtype=dtype, device=device)
    return described[1]
