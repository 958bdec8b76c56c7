"""Cost models for `core.balance`: what one node of a graph costs, as a float.

A cost model is any callable ``model(node, where) -> float``:

- ``node`` is a `Node` of the graph being costed: the flat root graph that `core.propagate`
  makes (targets of call_module and get_attr nodes are then full module paths), or, when a
  model looks inside a traced module that stays whole, a node of that module's graph;
- ``where`` is a `CostContext`: the snapshot, the graph that holds ``node`` and the path of the
  module that owns that graph, so a model can read parameters and the value info
  (`ValueInfo`: shape, dtype, bytes) of the node and of its inputs.

The result must be finite and not negative; `core.balance` rejects anything else, naming the
node. Models are pure functions of their inputs. The built-in ones:

- `params`: bytes of the parameters a node calls (every parameter under a called module, one
  count per storage) or reads (a get_attr of a parameter); buffers are not counted.
- `flops`: forward floating-point operations estimated from value shapes (matmul/linear/conv/
  attention, elementwise and normalisation ops, and leaf modules by their type name such as
  ``"Linear"``, ``"Embedding"``, ``"LayerNorm"``); a traced module that stays whole costs the
  sum of its own graph. Needs value info; raises `BalanceError` where a shape it needs is
  missing.
- `calls`: 1 for every call_module node (balance by number of layers).
- `by_module(mapping)`: a user's table from module path to cost (what a measuring adapter
  produces); a call_module node costs its module's entry, every other node ``fallback``
  (zero by default).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from pyrsistent import PMap, pmap

from core.errors import BalanceError
from core.graph import Graph, Node, ValueInfo
from core.snapshot import Module, Param, Snapshot, join

__all__ = [
    "CostContext",
    "CostModel",
    "ModuleCosts",
    "by_module",
    "calls",
    "flops",
    "params",
]


@dataclass(frozen=True, slots=True)
class CostContext:
    """Where a node is costed: the snapshot, the graph holding the node, and its owner's path."""

    snapshot: Snapshot
    graph: Graph
    prefix: str = ""

    def path(self, node: Node) -> str:
        """The full path of the module a call_module node calls, or of what a get_attr reads."""
        return join(self.prefix, node.target)

    def module(self, node: Node) -> Module | None:
        """The module a call_module node calls (None for other nodes)."""
        if node.op != "call_module":
            return None
        return self.snapshot.modules.get(self.path(node))

    def inputs(self, node: Node) -> list[Node]:
        """The nodes whose values `node` reads, args first, then kwargs (with repeats)."""
        return [self.graph.node(name) for name in node.inputs()]

    def inside(self, module: Module) -> CostContext:
        """The context of the nodes of a traced module's own graph."""
        assert module.graph is not None
        return CostContext(self.snapshot, module.graph, module.path)


CostModel: TypeAlias = Callable[[Node, CostContext], float]


# ---------------------------------------------------------------------------
# params


def _unique_params(module: Module) -> Iterator[Param]:
    """The parameters (not buffers) of `module` and below, one per storage."""
    seen: set[str] = set()
    stack = [module]
    while stack:
        here = stack.pop()
        for param in here.params.values():
            if not param.buffer and param.key not in seen:
                seen.add(param.key)
                yield param
        if here.children:
            stack.extend(here.children.values())


def params(node: Node, where: CostContext) -> float:
    """Bytes of the parameters `node` calls (a module, whole) or reads (get_attr)."""
    if node.op == "call_module":
        module = where.module(node)
        return 0.0 if module is None else float(sum(p.nbytes for p in _unique_params(module)))
    if node.op == "get_attr":
        param = where.snapshot.param(where.path(node))
        return float(param.nbytes) if param is not None and not param.buffer else 0.0
    return 0.0


def calls(node: Node, where: CostContext) -> float:
    """1 for every call_module node: stages balanced by number of layers."""
    return 1.0 if node.op == "call_module" else 0.0


# ---------------------------------------------------------------------------
# by_module


@dataclass(frozen=True, slots=True)
class ModuleCosts:
    """Costs per module path; a call_module node costs its entry, other nodes `fallback`."""

    costs: PMap[str, float]
    fallback: CostModel | None = None

    def __call__(self, node: Node, where: CostContext) -> float:
        if node.op == "call_module":
            cost = self.costs.get(where.path(node))
            if cost is not None:
                return cost
        return 0.0 if self.fallback is None else self.fallback(node, where)

    def unknown_paths(self, snapshot: Snapshot) -> tuple[str, ...]:
        """Paths of the table that name no module of `snapshot`."""
        return tuple(sorted(p for p in self.costs if p not in snapshot.modules))


def by_module(mapping: Mapping[str, float], fallback: CostModel | None = None) -> ModuleCosts:
    """A cost model from a table of module path -> cost (for example measured seconds).
    Paths must be strings and costs numbers (a `TypeError` otherwise); `balance` refuses costs
    that are negative or not finite with a `BalanceError`."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"by_module takes a mapping from module path to cost, not {type(mapping).__name__}")
    for key, cost in mapping.items():
        value: object = cost
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"cost table entry {key!r}: {value!r}; the table maps module paths (str) to numbers")
    return ModuleCosts(pmap({k: float(v) for k, v in mapping.items()}), fallback)


# ---------------------------------------------------------------------------
# flops

# Final component of a call_function target (or a call_method name) -> kind.
_MATMUL = frozenset({"matmul", "mm", "bmm", "linear", "__matmul__", "imatmul"})
_ADDMM = frozenset({"addmm", "baddbmm", "addbmm", "addmv"})
_CONV = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_tbc"})
_CONV_T = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
_ATTENTION = frozenset({"scaled_dot_product_attention"})
# Operations per output element.
_PER_ELEMENT: Mapping[str, int] = {
    **{
        name: 1
        for name in (
            "add", "sub", "mul", "div", "truediv", "floordiv", "mod", "neg", "pow", "abs",
            "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_", "rsub",
            "relu", "relu_", "relu6", "gelu", "silu", "mish", "sigmoid", "tanh", "exp", "log",
            "sqrt", "rsqrt", "erf", "sin", "cos", "elu", "leaky_relu", "hardtanh", "hardswish",
            "hardsigmoid", "softplus", "clamp", "clip", "maximum", "minimum", "where",
            "masked_fill", "masked_fill_", "dropout", "square", "reciprocal", "lerp",
        )
    },
    **{name: 5 for name in ("softmax", "log_softmax", "layer_norm", "group_norm", "batch_norm",
                            "instance_norm", "rms_norm", "normalize")},
}
# Operations per input element (reductions and losses).
_PER_INPUT_ELEMENT: Mapping[str, int] = {
    **{name: 1 for name in ("sum", "mean", "amax", "amin", "norm", "var", "std", "logsumexp")},
    **{name: 5 for name in ("cross_entropy", "nll_loss", "mse_loss", "l1_loss",
                            "binary_cross_entropy_with_logits")},
}
_FUNCTION_NAMESPACES = ("torch", "_operator", "operator", "math")

# Leaf modules by (final component of) type name.
_LINEAR_TYPES = frozenset({"Linear", "LazyLinear", "NonDynamicallyQuantizableLinear", "Conv1D"})
_CONV_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d", "LazyConv1d", "LazyConv2d", "LazyConv3d"})
_CONV_T_TYPES = frozenset({"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"})
_FREE_TYPES = frozenset({
    "Embedding", "EmbeddingBag", "Identity", "Flatten", "Unflatten", "Dropout1d",
    "Dropout2d", "Dropout3d", "AlphaDropout",
})
_NORM_TYPES = frozenset({
    "LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm", "Softmax",
    "LogSoftmax", "T5LayerNorm", "LlamaRMSNorm",
})


def flops(node: Node, where: CostContext) -> float:
    """Forward floating-point operations of `node`, estimated from value shapes.

    A traced module that stays whole costs the sum (`math.fsum`) of its own graph's nodes, and
    so on down: summed with an explicit stack, so modules nested thousands deep are fine."""
    if node.op != "call_module":
        return _node_flops(node, where)
    # Each frame: the nodes of one traced module's graph, the next one to price, and the prices
    # so far; a finished frame's fsum becomes one price of the frame below it.
    first = _traced_callee(node, where)
    if first is None:
        return _node_flops(node, where)
    frames: list[tuple[CostContext, tuple[Node, ...], list[int | float]]] = [(first, first.graph.nodes, [])]
    positions = [0]
    while True:
        inner, nodes, prices = frames[-1]
        i = positions[-1]
        if i == len(nodes):
            total = math.fsum(prices)
            frames.pop()
            positions.pop()
            if not frames:
                return total
            frames[-1][2].append(total)
            continue
        positions[-1] = i + 1
        here = nodes[i]
        callee = _traced_callee(here, inner) if here.op == "call_module" else None
        if callee is None:
            prices.append(_node_flops(here, inner))
        else:
            frames.append((callee, callee.graph.nodes, []))
            positions.append(0)


def _traced_callee(node: Node, where: CostContext) -> CostContext | None:
    """The context inside the traced module a call_module node calls (None for a leaf)."""
    module = where.module(node)
    if module is None or module.graph is None:
        return None
    return where.inside(module)


def _node_flops(node: Node, where: CostContext) -> float:
    """`flops` of a node that is not the call of a traced module."""
    if node.op == "call_module":
        module = where.module(node)
        if module is None:
            return 0.0
        return _leaf_module_flops(node, module, where)
    if node.op == "call_function":
        space, _, name = node.target.rpartition(".")
        if space.split(".")[0] not in _FUNCTION_NAMESPACES:
            return 0.0
        return _op_flops(name, node, where)
    if node.op == "call_method":
        return _op_flops(node.target, node, where)
    return 0.0


def _op_flops(name: str, node: Node, where: CostContext) -> float:
    if name in _MATMUL:
        a = where.inputs(node)[0]
        return 2.0 * _numel(node, node) * _shape(a, node)[-1]
    if name in _ADDMM:
        a = where.inputs(node)[1]
        return 2.0 * _numel(node, node) * _shape(a, node)[-1]
    if name in _CONV:
        x, w = where.inputs(node)[:2]
        return 2.0 * _numel(node, node) * _weight_numel(w, where, node) / _channels(node, node)
    if name in _CONV_T:
        x, w = where.inputs(node)[:2]
        return 2.0 * _numel(x, node) * _weight_numel(w, where, node) / _channels(x, node)
    if name in _ATTENTION:
        q, k = where.inputs(node)[:2]
        keys = _shape(k, node)[-2]
        return 2.0 * keys * (_numel(q, node) + _numel(node, node))
    per = _PER_ELEMENT.get(name)
    if per is not None:
        return float(per * _numel(node, node))
    per = _PER_INPUT_ELEMENT.get(name)
    if per is not None:
        return float(per * _numel(where.inputs(node)[0], node))
    return 0.0


def _leaf_module_flops(node: Node, module: Module, where: CostContext) -> float:
    kind = module.type_name.rpartition(".")[2]
    if kind in _FREE_TYPES:
        return 0.0
    if kind in _LINEAR_TYPES:
        inputs = where.inputs(node)
        out = _numel(node, node)
        if inputs and inputs[0].info is not None and inputs[0].info.kind == "tensor" and inputs[0].info.shape:
            return 2.0 * out * inputs[0].info.shape[-1]
        weight = _own_weight(module, node)
        return 2.0 * out * weight / _shape(node, node)[-1]
    if kind in _CONV_TYPES:
        return 2.0 * _numel(node, node) * _own_weight(module, node) / _channels(node, node)
    if kind in _CONV_T_TYPES:
        x = where.inputs(node)[0]
        return 2.0 * _numel(x, node) * _own_weight(module, node) / _channels(x, node)
    if kind in _NORM_TYPES:
        return 5.0 * _numel(node, node)
    weights = sum(p.numel for p in _unique_params(module))
    if weights == 0:  # an activation, a dropout...: one operation per element
        return float(_numel(node, node))
    # Any other dense layer: two operations per weight per token.
    return 2.0 * weights * _tokens(node, where)


def _tokens(node: Node, where: CostContext) -> float:
    """Rows of the layer's input (its leading dimensions): output first, else first input."""
    for candidate in [node, *where.inputs(node)]:
        info = candidate.info
        if info is not None and info.shape and info.kind == "tensor":
            return float(math.prod(info.shape[:-1]))
    raise _missing(node, "the shape of its output or of its first input")


def _info(value: Node, user: Node) -> ValueInfo:
    if value.info is None:
        what = "its output" if value is user else f"its input {value.name!r}"
        raise _missing(user, f"the value info of {what}")
    return value.info


def _shape(value: Node, user: Node) -> tuple[int, ...]:
    info = _info(value, user)
    if info.kind != "tensor" or not info.shape:
        raise _missing(user, f"a tensor shape for {value.name!r} (it is {info.kind} {info.shape})")
    return info.shape


def _numel(value: Node, user: Node) -> int:
    """Elements of a tensor value; 0 for scalars, None and containers (no tensor work)."""
    info = _info(value, user)
    if info.kind != "tensor":
        return 0
    if info.shape is None:
        raise _missing(user, f"the shape of {value.name!r}")
    return math.prod(info.shape)


def _channels(value: Node, user: Node) -> int:
    shape = _shape(value, user)
    return shape[1] if len(shape) > 1 else shape[0]


def _weight_numel(weight: Node, where: CostContext, user: Node) -> int:
    if weight.info is not None and weight.info.kind == "tensor" and weight.info.shape:
        return math.prod(weight.info.shape)
    if weight.op == "get_attr":
        param = where.snapshot.param(where.path(weight))
        if param is not None:
            return param.numel
    raise _missing(user, f"the shape of its weight {weight.name!r}")


def _own_weight(module: Module, user: Node) -> int:
    param = module.params.get("weight")
    if param is None:
        raise _missing(user, f"a 'weight' parameter in module {module.path!r}")
    return param.numel


def _missing(node: Node, what: str) -> BalanceError:
    return BalanceError(
        f"cost model 'flops' needs {what} for node {node.name!r} ({node.op} {node.target}); "
        "make the snapshot with shape propagation, or balance with cost=params."
    )
