"""Cut the flat exported graph back into one core graph per traced module.

Walking the graph in order, an `enter` marker opens the graph of a traced call and its `exit`
closes it; every node in between belongs to the innermost open call. In the caller, the call
becomes one `call_module` node whose arguments are the call's own argument tree (tensors as the
caller's values), and each tensor it returned is read back by `getitem` nodes, so that the
core can inline the call (a cut inside it) or keep it whole. A `leaf` marker becomes a
`call_module` node the same way. Parameters become `get_attr` nodes of the model's own names;
symbolic sizes read from outside a module are recomputed from its own inputs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pyrsistent import pmap
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from adapters.export import ops
from adapters.export.sizes import check_sizes, check_value
from adapters.graph.guards import MODE_CHECK
from adapters.export.calls import Built, CallRecord, Slot, slot_paths
from adapters.graph.convert import arg_to_core, value_info
from adapters.graph.handles import function_name, opaque
from core import Arg, DictOf, Graph, ListOf, Node, Ref, ValueInfo
from core.graph import map_refs
from core.snapshot import join


class RegroupError(ValueError):
    """The exported graph does not split into module graphs (see the message)."""


def regroup(
    program: ExportedProgram,
    calls: list[CallRecord],
    paths: Mapping[int, str],
    model: nn.Module,
) -> dict[str, Graph]:
    """module path -> its core graph, for every traced module."""
    attrs = _attribute_names(program)
    tensor_names = _tensor_names(model)
    aliases = _all_paths(model)
    by_name = {n.name: n for n in program.graph.nodes}
    graphs: dict[str, Graph] = {}
    open_calls: list[_ModuleGraph] = []
    owner: dict[fx.Node, _ModuleGraph] = {}  # marker node -> the graph that reads its outputs
    for node in program.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        target = node.target
        if target is ops.ENTER:
            record = calls[node.args[0]]
            path = paths[id(record.module)]
            builder = _ModuleGraph(record, path, attrs, program, aliases, by_name, tensor_names)
            if open_calls:
                open_calls[-1].call(record, path, list(node.args[1]))
            builder.start(node)
            owner[node] = builder
            open_calls.append(builder)
        elif target is ops.EXIT:
            builder = open_calls.pop()
            root = not open_calls
            graphs[builder.path] = builder.finish(list(node.args[1]), root)
            if open_calls:
                owner[node] = open_calls[-1]
        elif target is ops.LEAF:
            if not open_calls:
                raise RegroupError("a leaf call outside the root call")
            record = calls[node.args[0]]
            open_calls[-1].call(record, paths[id(record.module)], list(node.args[1]))
            owner[node] = open_calls[-1]
        elif target is operator.getitem and node.args[0] in owner:
            owner[node.args[0]].read_marker(node)
        elif open_calls:
            open_calls[-1].own(node)
    return graphs


class _ModuleGraph:
    """The core graph of one traced call, built node by node."""

    def __init__(
        self,
        record: CallRecord,
        path: str,
        attrs: Mapping[str, str],
        program: ExportedProgram,
        aliases: Mapping[int, list[str]],
        by_name: Mapping[str, fx.Node],
        tensor_names: Mapping[str, list[str]],
    ) -> None:
        self.tensor_names = tensor_names
        self.record, self.path, self.attrs, self.program, self.aliases = record, path, attrs, program, aliases
        self.by_name = by_name
        self.nodes: list[Node] = []
        self.names: set[str] = {"output"}  # the output node's name
        self.values: dict[fx.Node, Arg] = {}  # export node -> its value here
        self.calls: dict[int, tuple[str, dict[int, tuple[Any, ...]]]] = {}  # call id -> (node, slot paths)
        self.reads: dict[tuple[str, tuple[Any, ...]], str] = {}  # (node, path) -> getitem node
        self.inputs: dict[int, Arg] = {}  # enter slot -> value
        self.enter: fx.Node | None = None

    # -- names and nodes ---------------------------------------------------------------------

    def _name(self, wanted: str) -> str:
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in wanted) or "v"
        base, n = name, 0
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name

    def _add(self, node: Node) -> Ref:
        self.nodes.append(node)
        return Ref(node.name)

    def _read(self, base: str, steps: tuple[Any, ...], info: ValueInfo | None) -> Arg:
        """`base[k0][k1]...` as getitem nodes, each made once."""
        value: Arg = Ref(base)
        for i in range(len(steps)):
            key = (base, steps[: i + 1])
            name = self.reads.get(key)
            if name is None:
                name = self._name(f"{base}_{steps[i][1]}")
                last = i == len(steps) - 1
                self._add(Node(name, "call_function", function_name(operator.getitem), (value, steps[i][1]), info=info if last else None))
                self.reads[key] = name
            value = Ref(name)
        return value

    # -- the call's inputs -------------------------------------------------------------------

    def start(self, enter: fx.Node) -> None:
        """Placeholders for the call's arguments, by parameter name, in call order."""
        self.enter = enter
        record = self.record
        leaves: dict[int, Arg] = {}
        for i, tpl in enumerate(record.args):
            name = record.names[i] if i < len(record.names) else f"arg{i}"
            self._placeholder(name, tpl, leaves)
        for key, tpl in record.kwargs.items():
            self._placeholder(key, tpl, leaves)
        self.inputs = leaves
        for target, default in record.unpassed.items():  # the root's defaults, as defaults
            self._add(Node(self._name(target), "placeholder", target, (default,), info=value_info(default)))
        if record.caller is None:
            self._check_sizes(enter)
            self._check_values()
        if record.mode_read is not None:  # the code read self.training: the graph is that mode's
            name = self._name("check_mode")
            self._add(Node(name, "call_function", MODE_CHECK, (self.path, record.mode_read)))

    def _check_values(self) -> None:
        """The model's non-tensor inputs, and the defaults it was not passed, were fixed at
        their example values: stage 0 takes them (defaults as defaults) and checks them."""
        record = self.record
        named = [(record.names[i] if i < len(record.names) else f"arg{i}", tpl) for i, tpl in enumerate(record.args)]
        for target, tpl in [*named, *record.kwargs.items(), *record.unpassed.items()]:
            if tpl is None or type(tpl) in (bool, int, str):
                placeholder = next(n for n in self.nodes if n.op == "placeholder" and n.target == target)
                name = self._name(f"check_{target}")
                self._add(Node(name, "call_function", function_name(check_value), (Ref(placeholder.name), tpl, target)))

    def _check_sizes(self, enter: fx.Node) -> None:
        """The model's inputs must have the sizes export fixed (see `sizes`)."""
        for slot, tensor in enumerate(enter.args[1]):  # type: ignore[arg-type]
            val = tensor.meta.get("val")
            if not isinstance(val, torch.Tensor) or tensor.op != "placeholder":
                continue
            sizes = tuple(d if type(d) is int else None for d in val.shape)
            if all(s is None for s in sizes):
                continue
            name = self._name(f"check_{tensor.name}")
            self._add(Node(name, "call_function", function_name(check_sizes), (self.inputs[slot], sizes, tensor.name)))

    def _placeholder(self, target: str, tpl: Any, leaves: dict[int, Arg]) -> None:
        name = self._name(target)
        info = self.record.arg_infos.get(target)
        self._add(Node(name, "placeholder", target, info=info))
        for slot, steps in slot_paths(tpl).items():
            leaves[slot] = self._read(name, steps, None) if steps else Ref(name)

    def read_marker(self, getitem: fx.Node) -> None:
        """A tensor out of a marker: a call's argument (enter) or a call's result (exit, leaf)."""
        marker, index = getitem.args[0], int(getitem.args[1])  # type: ignore[arg-type]
        assert isinstance(marker, fx.Node)
        if marker is self.enter:
            self.values[getitem] = self.inputs[index]
            return
        call_id = int(marker.args[0])  # type: ignore[arg-type]
        node, paths = self.calls[call_id]
        steps = paths[index]
        self.values[getitem] = self._read(node, steps, None) if steps else Ref(node)

    # -- calls and own nodes -----------------------------------------------------------------

    def call(self, record: CallRecord, path: str, tensors: list[fx.Node]) -> None:
        """One `call_module` node for a call made from this module."""
        local = self._local(path, record.module)
        values = [self.lookup(t) for t in tensors]
        args = tuple(_tree_arg(a, values) for a in record.args)
        kwargs = pmap({k: _tree_arg(v, values) for k, v in record.kwargs.items()})
        name = self._name(local.replace(".", "_"))
        self._add(Node(name, "call_module", local, args, kwargs, record.result_info))
        self.calls[record.id] = (name, {k: tuple(v) for k, v in slot_paths(record.result).items()})
        # Each result tensor's info goes on the node that reads it.
        for slot, steps in slot_paths(record.result).items():
            if steps:
                self._read(name, tuple(steps), record.slot_infos[slot])

    def _below(self, paths: Sequence[str]) -> str | None:
        """The first of `paths` (a module's or a tensor's names) under this module, relative."""
        for candidate in paths:
            if not self.path:
                return candidate
            if candidate.startswith(self.path + "."):
                return candidate[len(self.path) + 1 :]
        return None

    def _local(self, path: str, module: nn.Module) -> str:
        """The called module's path relative to this module."""
        local = self._below([path, *self.aliases.get(id(module), ())])
        if local is not None:
            return local
        raise RegroupError(
            f"{self.path or 'the root module'} calls {path}, which is not one of its submodules; "
            "a cut can only inline modules that own what they call."
        )

    def own(self, node: fx.Node) -> None:
        """A node of this module's own code (an ATen op, a getitem, a symbolic size...)."""
        if node.op == "get_attr":
            self.values[node] = opaque(getattr(self.program.graph_module, str(node.target)))
            return
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            raise RegroupError(
                f"{self.path or 'the root module'} runs {node.target._name} (a torch.no_grad() or "
                "autocast region) in its own code, which stage modules cannot rebuild yet; keep "
                "the cuts out of this module, or use tracer='fx'."
            )
        name = self._name(node.name)
        args = tuple(self._arg(a) for a in node.args)
        kwargs = pmap({k: self._arg(v) for k, v in node.kwargs.items()})
        target = function_name(node.target) if callable(node.target) else str(node.target)
        info = value_info(node.meta["val"]) if "val" in node.meta else None
        self.values[node] = self._add(Node(name, "call_function", target, args, kwargs, info))

    def _arg(self, value: Any) -> Arg:
        return map_refs(arg_to_core(value), lambda n: self.lookup(self._by_name(n)))

    def _by_name(self, name: str) -> fx.Node:
        return self.by_name[name]

    def lookup(self, node: fx.Node) -> Arg:
        """The value of an exported node inside this module."""
        found = self.values.get(node)
        if found is not None:
            return found
        value: Arg
        if node.op == "placeholder" and node.name in self.attrs:
            value = self._get_attr(self.attrs[node.name], node)
        elif node.op == "placeholder" and node.name in self.program.graph_signature.inputs_to_lifted_tensor_constants:
            fqn = self.program.graph_signature.inputs_to_lifted_tensor_constants[node.name]
            value = opaque(self.program.constants[fqn])
        elif isinstance(node.meta.get("val"), torch.SymInt):
            value = self._size_of(node)
        else:
            raise RegroupError(
                f"{self.path or 'the root module'} reads {node.name!r}, a value made outside it "
                "that was not passed to it as an argument; keep the cuts out of this module."
            )
        self.values[node] = value
        return value

    def _get_attr(self, fqn: str, node: fx.Node) -> Ref:
        local = self._param_path(fqn)
        name = self._name(local.replace(".", "_"))
        return self._add(Node(name, "get_attr", local, info=value_info(node.meta.get("val"))))

    def _param_path(self, fqn: str) -> str:
        # Export names a tied parameter once; any of its names under this module will do.
        local = self._below(self.tensor_names.get(fqn, [fqn]))
        if local is not None:
            return local
        raise RegroupError(
            f"{self.path or 'the root module'} reads the parameter {fqn!r} of another module; "
            "keep the cuts out of this module."
        )

    def _size_of(self, node: fx.Node) -> Arg:
        """A symbolic size made outside: read it off an input of this module with that size."""
        wanted = node.meta["val"]
        for slot, value in self.inputs.items():
            tensor = self.enter.args[1][slot].meta.get("val") if self.enter is not None else None  # type: ignore[index,union-attr]
            if not isinstance(tensor, torch.Tensor):
                continue
            sizes: tuple[Any, ...] = tuple(tensor.shape)
            for dim, size in enumerate(sizes):
                if isinstance(size, torch.SymInt) and size.node.expr == wanted.node.expr:
                    name = self._name(f"sym_size_{dim}")
                    return self._add(
                        Node(name, "call_function", function_name(torch.ops.aten.sym_size.int), (value, dim), info=value_info(wanted))
                    )
        if node.op == "call_function":  # arithmetic on sizes: recompute it here
            name = self._name(node.name)
            args = tuple(self._arg(a) for a in node.args)
            return self._add(Node(name, "call_function", function_name(node.target), args, info=value_info(wanted)))  # type: ignore[arg-type]
        raise RegroupError(
            f"{self.path or 'the root module'} uses the size {wanted} that none of its inputs has; "
            "keep the cuts out of this module."
        )

    # -- the result ---------------------------------------------------------------------------

    def finish(self, outputs: list[fx.Node], root: bool) -> Graph:
        values = [self.lookup(t) for t in outputs]
        result = self._result(self.record.result, values, root)
        self.nodes.append(Node("output", "output", "output", (result,)))
        return Graph(tuple(self.nodes))

    def _result(self, tpl: Any, values: list[Arg], root: bool) -> Arg:
        def built(b: Built) -> Arg:
            if not root:  # read only through getitem by the caller (inlined or not)
                if b.fields:
                    return DictOf(tuple((k, self._result(v, values, root)) for k, v in b.fields))
                return tuple(self._result(v, values, root) for v in b.items)
            # The model's own result type, rebuilt in the last stage.
            name = self._name(b.cls.__name__.lower())
            args = tuple(self._result(v, values, root) for v in b.items)
            kwargs = pmap({k: self._result(v, values, root) for k, v in b.fields})
            return self._add(Node(name, "call_function", function_name(b.cls), args, kwargs, info=self.record.result_info))

        return _literal(tpl, values, built)


def _tree_arg(tpl: Any, values: list[Arg]) -> Arg:
    """A call's argument template as a core argument tree, tensors as this module's values."""

    def built(b: Built) -> Arg:
        raise RegroupError(f"a {b.cls.__name__} holding tensors passed as an argument")

    return _literal(tpl, values, built)


def _literal(tpl: Any, values: list[Arg], built: Callable[[Built], Arg]) -> Arg:
    """A template as a core argument tree: slots as `values`, containers as literals, other
    objects (`Built`) as `built` makes them."""
    if type(tpl) is Slot:
        return values[tpl.index]
    if type(tpl) is tuple:
        return tuple(_literal(v, values, built) for v in tpl)
    if type(tpl) is list:
        return ListOf(tuple(_literal(v, values, built) for v in tpl))
    if type(tpl) is dict:
        return DictOf(tuple((k, _literal(v, values, built)) for k, v in tpl.items()))
    if type(tpl) is Built:
        return built(tpl)
    return _constant(tpl)


def _constant(value: Any) -> Arg:
    return arg_to_core(value)


def _attribute_names(program: ExportedProgram) -> dict[str, str]:
    """Placeholder name -> the path of the parameter or buffer it lifts."""
    out: dict[str, str] = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target is not None:
            out[spec.arg.name] = spec.target
    return out


def _tensor_names(model: nn.Module) -> dict[str, list[str]]:
    """Each parameter's or buffer's path -> all its paths (tied tensors have several), own first."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_tensor.setdefault(id(tensor), []).append(name)
    return {name: [name, *(n for n in names if n != name)] for names in by_tensor.values() for name in names}


def _all_paths(model: nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        out.setdefault(id(module), []).append(name)
    return out


