"""The handle table: what the core sees as strings, resolved back to torch objects; and the
trust boundary for graphs read from JSON.

Call targets are named `f"{fn.__module__}.{fn.__qualname__}"` (the core's rules table relies on
`"_operator.getitem"`). Constants that are not JSON values become `Opaque` tokens: dtypes,
devices, layouts and memory formats get self-describing tokens that any process can resolve;
anything else is kept in this process's table under `handle:<n>`.

A graph made in this process (traced, or built by Python code) is trusted: its targets resolve
as they always did, by name. A graph read from JSON (`Graph.origin == "json"`, and every plan
made from one) is data: `admit_graph` checks it before any of it is turned into code, and
resolves its call targets only from an allow-list (torch's tensor operations, `torch.ops.aten`,
`operator`, `math`, a few builtins, transformers' output classes, stagecut's own checks) or from
modules the caller trusts by name (`trusted_modules=`, `trust_modules`). See docs/security.md.
"""

from __future__ import annotations

import builtins
import importlib
import keyword
import math
import operator
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import torch

from core import Arg, DictOf, Graph, ListOf, Node, Opaque, PlanError, Ref, SliceOf


class UnresolvedHandle(PlanError):
    """A plan names a function or constant this process cannot find."""


class UntrustedTarget(UnresolvedHandle):
    """A graph read from JSON names a function, method, attribute or constant that is not on
    the allow-list, or a name that cannot be put into generated code: refused before anything
    is built or run. The message names it and how to allow it."""


_OBJECTS: dict[str, object] = {}  # token -> object, for constants without a portable name
_TOKENS: dict[int, str] = {}  # id(object) -> token (objects stay alive in _OBJECTS)
_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def function_name(fn: Callable[..., Any]) -> str:
    """A portable name for a call_function target, remembered for `resolve_function`."""
    name = _operator_name(fn)
    if name is None:
        module = getattr(fn, "__module__", None) or "builtins"
        name = f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"
    known = _FUNCTIONS.setdefault(name, fn)
    if known is not fn:  # two callables with one name (e.g. closures): keep them apart
        name = f"{name}#{id(fn)}"
        _FUNCTIONS[name] = fn
    return name


def _operator_name(fn: object) -> str | None:
    """`torch.ops.<namespace>.<op>.<overload>` for the ATen-level targets of exported graphs."""
    if isinstance(fn, torch._ops.OpOverload):
        return f"torch.ops.{fn.namespace}.{fn._opname}.{fn._overloadname}"
    if isinstance(fn, torch._ops.HigherOrderOperator):
        return f"torch.ops.higher_order.{fn._name}"
    return None


def resolve_function(name: str) -> Callable[..., Any]:
    fn = _FUNCTIONS.get(name)
    if fn is None:
        fn = _import(name)
        _FUNCTIONS[name] = fn
    return fn


def _import(name: str) -> Callable[..., Any]:
    if name.startswith("torch.ops."):
        obj: Any = torch.ops
        try:
            for attr in name.split(".")[2:]:
                obj = getattr(obj, attr)
        except (AttributeError, RuntimeError):
            pass
        else:
            return obj  # type: ignore[no-any-return]
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if callable(obj):
            return obj  # type: ignore[no-any-return]
    raise UnresolvedHandle(
        f"function {name!r} cannot be found in this process; plan in the process that traced the "
        "model, or make the function importable under that name."
    )


def opaque(value: object) -> Opaque:
    """The token of a non-JSON constant."""
    if isinstance(value, torch.dtype):
        return Opaque(f"dtype:{str(value).removeprefix('torch.')}")
    if isinstance(value, torch.device):
        return Opaque(f"device:{value}")
    if isinstance(value, (torch.layout, torch.memory_format)):
        return Opaque(f"torch:{str(value).removeprefix('torch.')}")
    if value is Ellipsis:
        return Opaque("ellipsis")
    token = _TOKENS.get(id(value))
    if token is None or _OBJECTS.get(token) is not value:
        token = f"handle:{len(_OBJECTS)}"
        _OBJECTS[token] = value
        _TOKENS[id(value)] = token
    return Opaque(token)


def resolve_opaque(token: Opaque) -> object:
    value = _portable(token.token)
    if value is not _NOT_PORTABLE:
        return value
    if token.token in _OBJECTS:
        return _OBJECTS[token.token]
    raise UnresolvedHandle(
        f"constant {token.token!r} was made by another process; plan in the process that traced "
        "the model."
    )


_NOT_PORTABLE = object()


def _portable(token: str) -> object:
    """The value of a self-describing token (a dtype, a device, a layout or memory format, the
    ellipsis), `_NOT_PORTABLE` for a `handle:<n>`; an `UnresolvedHandle` for a malformed one:
    `dtype:os` must not reach `torch.os`."""
    kind, _, rest = token.partition(":")
    if kind == "dtype":
        value = getattr(torch, rest, None) if rest.isidentifier() else None
        if isinstance(value, torch.dtype):
            return value
    elif kind == "torch":
        value = getattr(torch, rest, None) if rest.isidentifier() else None
        if isinstance(value, (torch.layout, torch.memory_format)):
            return value
    elif kind == "device":
        try:
            return torch.device(rest)
        except (RuntimeError, ValueError, TypeError):
            pass
    elif token == "ellipsis":
        return Ellipsis
    elif kind == "handle":
        return _NOT_PORTABLE
    raise UnresolvedHandle(
        f"constant {token!r} is not a dtype, device, layout, memory format or ellipsis token stagecut "
        "writes; make the snapshot again with stagecut."
    )


# -- the trust boundary for graphs read from JSON ----------------------------------------------

_TRUSTED: set[str] = set()  # modules trusted for every JSON graph in this process


def trust_modules(*names: str) -> None:
    """Trust the functions and classes of these modules (and their submodules) in every graph
    read from JSON in this process, as `stage_modules(..., trusted_modules=names)` does for one
    call. Only for code you would run anyway: a plan file can call them with any arguments."""
    for name in names:
        _check_module_name(name)
        _TRUSTED.add(name)


def trusted_modules() -> frozenset[str]:
    """The modules `trust_modules` has trusted in this process."""
    return frozenset(_TRUSTED)


def _check_module_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a trusted module is named by a string, not {type(name).__name__} ({name!r})")
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"{name!r} is not a module name (package.module)")


def admit_graph(
    graph: Graph, *, first: bool, trusted_modules: Iterable[str] = (), where: str = "the graph"
) -> dict[str, Callable[..., Any]] | None:
    """Check a graph before it is turned into code: None (nothing to check) for a graph made in
    this process; for one read from JSON, the call targets it may call, resolved, or
    `UntrustedTarget` naming the first node that is refused and how to allow it.

    Checked: every call_function target is on the allow-list or in a trusted module; method and
    attribute names (call_method, get_attr, call_module, `getattr`'s constant name) are not
    private (`_x`, `__x__`), not on the short list of names that reach files, hooks or frames,
    and are plain names; placeholder targets (for `first`, the first stage, whose placeholders
    become the forward's parameters) and keyword names are Python identifiers; opaque constants
    are dtype, device, layout, memory format or ellipsis tokens, never another process's
    `handle:<n>`. Nothing is imported except allow-listed modules and trusted ones.
    """
    if graph.origin != "json":
        return None
    trusted = frozenset(trusted_modules) | _TRUSTED
    for name in trusted:
        _check_module_name(name)
    resolved: dict[str, Callable[..., Any]] = {}
    for node in graph.nodes:
        problem = _node_problem(node, first, trusted, resolved)
        if problem is not None:
            raise UntrustedTarget(f"{where}, node {node.name!r} ({node.op} {node.target!r}): {problem}")
    return resolved


_HOW = (
    "a plan or snapshot read from JSON may only call what is on stagecut's allow-list; if you trust "
    "the code of the module that defines it, pass trusted_modules=[{module!r}] to stage_modules or "
    "Pipeline (stagecut train --trust-module {module}; or call "
    "adapters.graph.handles.trust_modules({module!r})), or build the stages from a snapshot "
    "traced in this process (docs/security.md)"
)


def _node_problem(
    node: Node, first: bool, trusted: frozenset[str], resolved: dict[str, Callable[..., Any]]
) -> str | None:
    op, target = node.op, node.target
    if op == "placeholder":
        bare = target.lstrip("*")
        if first and (len(target) - len(bare) > 2 or not bare.isidentifier() or keyword.iskeyword(bare)):
            return "a parameter name must be a Python identifier."
    elif op == "call_method":
        problem = _member_problem(target, "method")
        if problem is not None:
            return problem
    elif op in ("get_attr", "call_module"):
        for part in target.split("."):
            problem = _path_part_problem(part)
            if problem is not None:
                return problem
    elif op == "call_function":
        from adapters.graph.guards import MODE_CHECK

        if target != MODE_CHECK:  # built by stage_module itself, for this model
            fn = resolved.get(target) or _resolve_untrusted(target, trusted)
            if isinstance(fn, str):
                return fn
            resolved[target] = fn
            if fn in _NAMED_ATTRIBUTE:
                name = node.args[1] if len(node.args) >= 2 else node.kwargs.get("name")
                if not isinstance(name, str):
                    return f"{target} must name the attribute with a constant string."
                problem = _member_problem(name, "attribute")
                if problem is not None:
                    return problem
    for key in node.kwargs:
        if not key.isidentifier() or keyword.iskeyword(key):
            return f"keyword {key!r} is not a Python identifier."
    for token in _opaques((*node.args, *node.kwargs.values())):
        if token.startswith("handle:"):
            return (
                f"constant {token!r} is a handle into the memory of the process that traced the model, "
                "which this process cannot resolve; build the stages in that process."
            )
        try:
            _portable(token)
        except UnresolvedHandle as err:
            return str(err)
    return None


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")
# Public names that still reach files, process memory, hooks (code run later), or interpreter
# frames (and from them every module): never called or read from a JSON graph.
DENIED_NAMES = frozenset({
    "numpy", "tofile", "storage", "untyped_storage", "from_file", "share_memory_", "pin_memory",
    "data_ptr", "set_", "apply", "apply_", "map_", "map2_", "load_state_dict", "set_extra_state",
    "register_hook", "register_post_accumulate_grad_hook", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_backward_hook", "register_module", "register_buffer", "register_parameter",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_state_dict_pre_hook", "register_state_dict_post_hook", "add_module", "to_empty",
    "save", "load", "dump", "dumps", "system", "popen", "spawn", "exec", "eval", "compile", "open",
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "ag_await", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next",
    "func_globals", "func_code", "func_closure", "mro",
})


def _member_problem(name: str, what: str) -> str | None:
    if not name.isidentifier() or keyword.iskeyword(name):
        return f"the {what} name {name!r} is not a Python identifier."
    if name.startswith("_"):
        return (
            f"the {what} {name!r} is private (it starts with '_'), which a graph read from JSON may not "
            "use: private and special names reach Python's internals."
        )
    if name in DENIED_NAMES:
        return f"the {what} {name!r} reaches files, memory, hooks or frames, which a graph read from JSON may not use."
    return None


def _path_part_problem(part: str) -> str | None:
    if not _PLAIN_NAME.fullmatch(part):
        return f"{part!r} is not a plain module or attribute name (letters, digits, '_')."
    if part.startswith("__") or part in DENIED_NAMES:
        return f"{part!r} is a special or denied name, which a graph read from JSON may not use."
    return None


def _opaques(args: Iterable[Arg]) -> Iterator[str]:
    stack = list(args)
    while stack:
        arg = stack.pop()
        kind = type(arg)
        if kind is Opaque:
            yield arg.token  # type: ignore[union-attr]
        elif kind is tuple:
            stack.extend(arg)  # type: ignore[arg-type]
        elif kind is ListOf:
            stack.extend(arg.items)  # type: ignore[union-attr]
        elif kind is DictOf:
            stack.extend(x for pair in arg.items for x in pair)  # type: ignore[union-attr]
        elif kind is SliceOf:
            stack.extend((arg.start, arg.stop, arg.step))  # type: ignore[union-attr]


def _resolve_untrusted(name: str, trusted: frozenset[str]) -> Callable[..., Any] | str:
    """The callable a JSON graph's call_function target names, or why it is refused."""
    fn = allowed_functions().get(name)
    if fn is not None:
        return fn
    if name.startswith("torch.ops."):
        found = _aten_op(name)
        if found is not None:
            return found
    found_output = _model_output_class(name)
    if found_output is not None:
        return found_output
    module = _trusted_root(name, trusted)
    if module is not None:
        return _import_trusted(name, trusted)
    owner = name.rpartition(".")[0] or name
    return f"{name!r} is not on the allow-list; " + _HOW.format(module=owner) + "."


@cache
def allowed_functions() -> Mapping[str, Callable[..., Any]]:
    """The allow-list: name -> callable, under both the names the frontends write
    (`module.qualname`: `torch._VariableFunctionsClass.relu`, `_operator.add`) and the public
    ones (`torch.relu`, `operator.add`). `torch.ops.aten.<op>.<overload>` and transformers'
    output classes are checked apart (`_aten_op`, `_model_output_class`)."""
    table: dict[str, Callable[..., Any]] = {}

    def add(public: str, fn: Any) -> None:
        if not callable(fn):
            return
        table[public] = fn
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            table.setdefault(f"{module}.{qualname}", fn)

    for name in _OPERATOR_NAMES:
        fn = getattr(operator, name)
        add(f"operator.{name}", fn)
        add(f"_operator.{name}", fn)
    for name in _BUILTIN_NAMES:
        add(f"builtins.{name}", getattr(builtins, name))
    for name in dir(math):
        if not name.startswith("_"):
            add(f"math.{name}", getattr(math, name))
    variable_functions = torch._C._VariableFunctions  # torch's tensor operations, in C++
    native = set()
    for name in dir(variable_functions):
        if name.startswith("_") or _DENIED_TORCH.search(name):
            continue
        fn = getattr(variable_functions, name)
        native.add(id(fn))
        table.setdefault(f"torch._VariableFunctionsClass.{name}", fn)
        if getattr(torch, name, None) is fn:  # else torch.<name> is another function (torch.norm)
            add(f"torch.{name}", fn)
    import torch.functional as torch_functional

    for name in getattr(torch_functional, "__all__", ()):
        fn = getattr(torch_functional, name, None)
        if getattr(fn, "__module__", None) == "torch.functional" and not _DENIED_TORCH.search(name):
            add(f"torch.functional.{name}", fn)
            if getattr(torch, name, None) is fn:
                add(f"torch.{name}", fn)
    functional = torch.nn.functional
    for name in dir(functional):
        fn = getattr(functional, name)
        if name.startswith("_") or _DENIED_TORCH.search(name) or isinstance(fn, (types.ModuleType, type)):
            continue
        if id(fn) in native or getattr(fn, "__module__", None) in ("torch.nn.functional", "torch._C._nn", "torch.functional"):
            add(f"torch.nn.functional.{name}", fn)
    for name in _TORCH_EXTRAS:
        fn = getattr(torch, name, None)
        if fn is not None:
            add(f"torch.{name}", fn)
    from torch.fx import _symbolic_trace

    add("torch.fx._symbolic_trace._assert_is_none", _symbolic_trace._assert_is_none)
    from adapters.export.sizes import check_sizes, check_value

    add("adapters.export.sizes.check_sizes", check_sizes)  # stagecut's own input checks
    add("adapters.export.sizes.check_value", check_value)
    return types.MappingProxyType(table)


_OPERATOR_NAMES = (
    "abs add and_ concat contains countOf eq floordiv ge getitem gt iadd iand iconcat ifloordiv "
    "ilshift imatmul imod imul index indexOf inv invert ior ipow irshift is_ is_not isub itruediv "
    "ixor le length_hint lshift lt matmul mod mul ne neg not_ or_ pos pow rshift setitem delitem sub "
    "truediv truth xor"
).split()
_BUILTIN_NAMES = (
    "abs all any bool dict divmod enumerate float getattr hasattr int len list max min pow range "
    "reversed round slice str sum tuple zip"
).split()
# torch functions that are not in _VariableFunctions but appear in traced graphs
_TORCH_EXTRAS = ("_assert", "sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sum", "sym_ite")
_DENIED_TORCH = re.compile(r"file|save|load|blob|pickle|print|share|mmap|dlpack|^set_|seed|ipc|fd")
_NAMED_ATTRIBUTE = frozenset({builtins.getattr, builtins.hasattr})


def _aten_op(name: str) -> Callable[..., Any] | None:
    """`torch.ops.aten.<op>` or `torch.ops.aten.<op>.<overload>`, found without importing."""
    parts = name.split(".")
    if len(parts) not in (4, 5) or parts[2] != "aten" or _DENIED_TORCH.search(parts[3]):
        return None
    if not all(_PLAIN_NAME.fullmatch(p) for p in parts[3:]):
        return None
    try:
        obj: Any = getattr(torch.ops.aten, parts[3])
        if len(parts) == 5:
            obj = getattr(obj, parts[4])
    except (AttributeError, RuntimeError):
        return None
    if isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return obj
    return None


def _model_output_class(name: str) -> Callable[..., Any] | None:
    """A transformers output class (`transformers.modeling_outputs.CausalLMOutputWithPast`):
    a plain container, allowed when transformers is installed."""
    module, _, cls_name = name.rpartition(".")
    if module != "transformers.modeling_outputs" or not cls_name.isidentifier():
        return None
    try:
        outputs = importlib.import_module(module)
        base: type = importlib.import_module("transformers.utils.generic").ModelOutput
    except (ImportError, AttributeError):
        return None
    cls = getattr(outputs, cls_name, None)
    if isinstance(cls, type) and issubclass(cls, base) and cls.__module__ == module:
        return cls
    return None


def _trusted_root(name: str, trusted: frozenset[str]) -> str | None:
    for root in trusted:
        if name.startswith(root + "."):
            return root
    return None


def _import_trusted(name: str, trusted: frozenset[str]) -> Callable[..., Any] | str:
    """`name` from a trusted module: imports only modules inside the trusted ones, and takes only
    what is defined there (not `os` imported by one of them)."""
    root = _trusted_root(name, trusted)
    assert root is not None
    parts = name.split(".")
    root_parts = root.count(".") + 1
    for split in range(len(parts) - 1, root_parts - 1, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in parts[split:]:
            if attr.startswith("__") or not attr.isidentifier():
                return f"{name!r}: {attr!r} is not a plain name."
            obj = getattr(obj, attr, None)
            if obj is None:
                break
            if isinstance(obj, types.ModuleType) and _trusted_root(obj.__name__ + ".", trusted) is None:
                return f"{name!r} reaches module {obj.__name__!r}, which is not trusted."
        else:
            defined_in = getattr(obj, "__module__", None)
            if not callable(obj) or isinstance(obj, types.ModuleType):
                return f"{name!r} is not a function or class."
            if not isinstance(defined_in, str) or (defined_in not in trusted and _trusted_root(defined_in, trusted) is None):
                return (
                    f"{name!r} is defined in {defined_in!r}, not in a trusted module; trust that module "
                    "if you mean to allow it."
                )
            return obj  # type: ignore[no-any-return]
        break
    return f"{name!r} cannot be found in the trusted modules {sorted(trusted)}."


__all__ = [
    "DENIED_NAMES", "UnresolvedHandle", "UntrustedTarget", "admit_graph", "allowed_functions",
    "function_name", "opaque", "resolve_function", "resolve_opaque", "trust_modules", "trusted_modules",
]
