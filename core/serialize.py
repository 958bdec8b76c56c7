"""Snapshot and Plan as versioned JSON, so other schedulers can use the core without torch.

The schema is documented in docs/snapshot-schema.md. Reading is the trust boundary for data:

- every field is checked for its exact type (a bool is never an int), sizes and counts are
  integers from 0 to 2**63 - 1, unknown fields are refused, names that end up in generated code
  (placeholder targets, keyword names, method names) must be Python identifiers, and names and
  paths may not hold quotes, backslashes or control characters;
- then `check_snapshot` / `check_plan` check what the document means (arity, references, cycles,
  path collisions, tied sizes, a plan consistent with its own graphs);
- every problem is a `MalformedSnapshot` (`MalformedPlan` for plans) whose message starts with
  the JSON path of the bad field (`$.root.children.enc.graph[2].args`) and says how to fix it;
- nothing recurses on the document's depth: a module tree thousands of levels deep is read (and
  written) with explicit stacks, and argument trees deeper than `MAX_ARG_DEPTH` are refused;
- every graph read is marked `origin="json"`, and so is every plan made from it: adapters check
  such graphs before they turn them into code (docs/security.md).
"""

from __future__ import annotations

import json
import keyword
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, cast

from pyrsistent import pmap

from core.cuts import Cut
from core.errors import MalformedPlan, MalformedSnapshot
from core.graph import MAX_ARG_DEPTH, OPS, Arg, DictOf, Graph, ListOf, Node, Op, Opaque, Ref, SliceOf, ValueInfo, ValueKind
from core.plan import Plan, Stage, StageFigures, no_cycle_collection
from core.snapshot import Module, Param, Snapshot, join
from core.validate import MAX_COUNT, MAX_TOTAL, PLAN_FIX, SNAPSHOT_FIX, VALUE_KINDS, check_plan, check_snapshot, json_key

SNAPSHOT_SCHEMA = "stagecut.snapshot/1"
PLAN_SCHEMA = "stagecut.plan/1"
Json = Any  # what json.loads returns


# -- writing ----------------------------------------------------------------------------------


def snapshot_to_json(snapshot: Snapshot) -> str:
    """The snapshot as JSON text. Module by module, with an explicit stack: each module's own
    fields go through `json.dumps`, the nesting of children is written here, so a tree of any
    depth is written (json.dumps alone recurses once per level)."""
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a core.Snapshot, got {type(snapshot).__name__}")
    parts: list[str] = ['{"schema": ', json.dumps(SNAPSHOT_SCHEMA), ', "root": ']
    with no_cycle_collection():
        _write_tree(snapshot.root, parts)
    if snapshot.tracer:
        parts += [', "tracer": ', json.dumps(snapshot.tracer)]
    parts.append("}")
    return "".join(parts)


def _write_tree(root: Module, parts: list[str]) -> None:
    # Text identical to json.dumps of the nested dicts: `{"path": ..., ..., "children": {...}}`.
    stack: list[Iterator[tuple[str, Module]] | str] = [iter([("", root)])]
    first = True
    while stack:
        top = stack[-1]
        if isinstance(top, str):  # the closing text of a module
            stack.pop()
            parts.append(top)
            first = False
            continue
        item = next(top, None)
        if item is None:
            stack.pop()
            continue
        key, module = item
        if key:  # a child: `"key": ` after a comma unless it is the first
            parts.append(("" if first else ", ") + json.dumps(key) + ": ")
        head = json.dumps(_module_fields(module), allow_nan=False)
        children = module.ordered_children()
        if not children:
            parts.append(head[:-1] + ', "children": {}}')
            first = False
            continue
        parts.append(head[:-1] + ', "children": {')
        stack.append("}}")
        stack.append(iter(children))
        first = True


def _module_fields(module: Module) -> dict[str, Json]:
    return {
        "path": module.path,
        "type": module.type_name,
        "graph": None if module.graph is None else _graph_out(module.graph),
        "leaf_reason": module.leaf_reason,
        "params": {
            name: {"key": p.key, "numel": p.numel, "nbytes": p.nbytes, "buffer": p.buffer}
            for name, p in sorted(module.params.items())
        },
    }


def plan_to_json(plan: Plan) -> str:
    if not isinstance(plan, Plan):
        raise TypeError(f"expected a core.Plan, got {type(plan).__name__}")
    with no_cycle_collection():
        return _plan_json(plan)


def _plan_json(plan: Plan) -> str:
    return json.dumps(
        {
            "schema": PLAN_SCHEMA,
            "tracer": plan.tracer,
            "cuts": [str(c) for c in plan.cuts],
            "ties": [[[name, stage] for name, stage in group] for group in plan.ties],
            "stages": [_stage_out(s) for s in plan.stages],
        },
        allow_nan=False,
    )


def _arg_out(arg: Arg) -> Json:
    if arg is None or isinstance(arg, (bool, int, str)):
        return arg
    if isinstance(arg, float):
        return arg if math.isfinite(arg) else {"float": repr(arg)}
    if type(arg) is Ref:
        return {"ref": arg.name}
    if type(arg) is Opaque:
        return {"opaque": arg.token}
    if type(arg) is tuple:
        return {"tuple": [_arg_out(a) for a in arg]}
    if type(arg) is ListOf:
        return {"list": [_arg_out(a) for a in arg.items]}
    if type(arg) is DictOf:
        return {"dict": [[_arg_out(k), _arg_out(v)] for k, v in arg.items]}
    if type(arg) is SliceOf:
        return {"slice": [_arg_out(arg.start), _arg_out(arg.stop), _arg_out(arg.step)]}
    raise MalformedSnapshot(f"cannot serialise argument {arg!r}")


def _node_out(node: Node) -> Json:
    out: dict[str, Json] = {"name": node.name, "op": node.op, "target": node.target}
    if node.args:
        out["args"] = [_arg_out(a) for a in node.args]
    if node.kwargs:
        out["kwargs"] = {k: _arg_out(v) for k, v in node.kwargs.items()}
    if node.info is not None:
        info = node.info
        out["info"] = {"kind": info.kind, "shape": info.shape, "dtype": info.dtype, "nbytes": info.nbytes}
    return out


def _graph_out(graph: Graph) -> Json:
    return [_node_out(n) for n in graph.nodes]


def _stage_out(stage: Stage) -> Json:
    fig = stage.figures
    return {
        "index": stage.index,
        "inputs": list(stage.inputs),
        "outputs": list(stage.outputs),
        "params": list(stage.params),
        "modules": list(stage.modules),
        "figures": {
            "params": fig.params,
            "param_bytes": fig.param_bytes,
            "bytes_in": fig.bytes_in,
            "bytes_out": fig.bytes_out,
        },
        "graph": _graph_out(stage.graph),
    }


# -- reading: the document --------------------------------------------------------------------


def snapshot_from_json(text: str | bytes) -> Snapshot:
    with no_cycle_collection():  # reading allocates millions of objects, and no cycles
        return _snapshot_from_json(text)


def _snapshot_from_json(text: str | bytes) -> Snapshot:
    data = _load(text, SNAPSHOT_SCHEMA, MalformedSnapshot)
    try:
        _keys(data, _DOC_KEYS, ("schema", "root"), "the document")
        tracer = data.get("tracer", "")
        if type(tracer) is not str:
            raise _Bad(f"tracer is {_show(tracer)}; it must be a string").at(".tracer")
        root = _module_tree(data["root"])
    except _Bad as bad:
        raise MalformedSnapshot(f"{bad.message}. To fix: {SNAPSHOT_FIX}.", bad.path()) from None
    snapshot = Snapshot(root, tracer)
    try:
        check_snapshot(snapshot)
    except MalformedSnapshot as err:
        if err.location is None:  # pragma: no cover - check_snapshot always locates
            raise
        module, field = err.location
        raise MalformedSnapshot(str(err), module_json_path(module) + field) from None
    return snapshot


def plan_from_json(text: str | bytes) -> Plan:
    with no_cycle_collection():
        return _plan_from_json(text)


def _plan_from_json(text: str | bytes) -> Plan:
    data = _load(text, PLAN_SCHEMA, MalformedPlan)
    try:
        _keys(data, _PLAN_KEYS, ("schema", "stages", "ties", "cuts"), "the document")
        tracer = data.get("tracer", "")
        if type(tracer) is not str:
            raise _Bad(f"tracer is {_show(tracer)}; it must be a string").at(".tracer")
        # the memory, traffic and time figures `stagecut plan --schedule ...` adds: not part of
        # the plan (they depend on how it is trained), read past
        training = data.get("training")
        if training is not None and type(training) is not dict:
            raise _Bad(f"training is {_show(training)}; it must be an object").at(".training")
        stages = []
        for i, stage in _items(data["stages"], ".stages"):
            try:
                stages.append(_stage_in(stage, i))
            except _Bad as bad:
                raise bad.at(f"[{i}]").at(".stages") from None
        ties = tuple(_tie_group(group, i) for i, group in _items(data["ties"], ".ties"))
        cuts = tuple(_cut_in(cut, i) for i, cut in _items(data["cuts"], ".cuts"))
    except _Bad as bad:
        raise MalformedPlan(f"{bad.message}. To fix: {PLAN_FIX}.", bad.path()) from None
    plan = Plan(tuple(stages), ties, cuts, tracer)
    try:
        check_plan(plan)
    except MalformedPlan as err:
        if err.location is None:  # pragma: no cover - check_plan always locates
            raise
        raise MalformedPlan(str(err), "$" + err.location[1]) from None
    return plan


def module_json_path(path: str) -> str:
    """The JSON path of the module at `path` in a snapshot document (its keys have no dots)."""
    out = "$.root"
    if path:
        for key in path.split("."):
            out += f".children{json_key(key)}"
    return out


_DOC_KEYS = frozenset(("schema", "root", "tracer"))
_PLAN_KEYS = frozenset(("schema", "tracer", "cuts", "ties", "stages", "training"))
_MODULE_KEYS = frozenset(("path", "type", "graph", "leaf_reason", "params", "children"))
_PARAM_KEYS = frozenset(("key", "numel", "nbytes", "buffer"))
_NODE_KEYS = frozenset(("name", "op", "target", "args", "kwargs", "info"))
_INFO_KEYS = frozenset(("kind", "shape", "dtype", "nbytes"))
_STAGE_KEYS = frozenset(("index", "inputs", "outputs", "params", "modules", "figures", "graph"))
_FIGURE_KEYS = frozenset(("params", "param_bytes", "bytes_in", "bytes_out"))


class _Bad(Exception):
    """A problem found while reading, and where: steps are added as it unwinds (innermost first)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str] = []

    def at(self, step: str) -> _Bad:
        self.steps.append(step)
        return self

    def path(self) -> str:
        return "$" + "".join(reversed(self.steps))


def _load(text: str | bytes, schema: str, error: type[MalformedSnapshot]) -> Json:
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(f"expected JSON text (str or bytes), got {type(text).__name__}")
    data = parse_json(text, error)
    found = data.get("schema") if isinstance(data, dict) else None
    if found != schema:
        shown = _show(found) if isinstance(data, dict) and "schema" in data else "none"
        what = "a snapshot" if schema == SNAPSHOT_SCHEMA else "a plan"
        raise error(
            f"expected schema {schema!r}, found {shown}; was it written by stagecut? "
            f"(reading {what}: docs/snapshot-schema.md describes the format)",
            "$.schema",
        )
    return data


# -- reading: JSON text without recursion limits ----------------------------------------------


class _Token:
    """A JSON number no Python value stands for: `NaN`, `Infinity`, an integer too long to read."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text if len(self.text) <= 20 else f"an integer of {len(self.text)} digits"


def parse_json(text: str | bytes | bytearray, error: type[MalformedSnapshot] = MalformedSnapshot) -> Json:
    """`json.loads`, where a document nested too deeply for it (about 1000 levels) is read by an
    iterative parser instead, and `NaN`, `Infinity` and integers of more than 4300 digits become
    `_Token`s, which the readers refuse with the path of the field."""
    try:
        return json.loads(text, parse_constant=_Token)
    except RecursionError:
        pass
    except json.JSONDecodeError as err:
        raise error(f"not valid JSON: {err}", "$") from None
    except ValueError:  # an integer longer than Python reads (sys.get_int_max_str_digits)
        pass
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise error(f"not valid JSON: not UTF-8 ({err})", "$") from None
    return _parse_iteratively(text, error)


_WS = re.compile(r"[ \t\n\r]*")
_SCANNER = json.scanner.make_scanner(json.JSONDecoder(parse_constant=_Token))  # type: ignore[attr-defined]
_SKIP = 400
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS: dict[str, Json] = {
    "true": True, "false": False, "null": None,
    "NaN": _Token("NaN"), "Infinity": _Token("Infinity"), "-Infinity": _Token("-Infinity"),
}


def _parse_iteratively(text: str, error: type[MalformedSnapshot]) -> Json:
    scan: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
    n = len(text)

    def fail(message: str, pos: int) -> NoReturn:
        line = text.count("\n", 0, pos) + 1
        column = pos - text.rfind("\n", 0, pos)
        raise error(f"not valid JSON: {message}: line {line} column {column} (char {pos})", "$")

    def key_at(pos: int) -> tuple[str, int]:
        if text.startswith('"', pos):
            try:
                key, pos = scan(text, pos + 1, True)
            except ValueError as err:
                fail(str(err).split(":")[0], pos)
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if text.startswith(":", pos):
                return key, _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            fail("Expecting ':' delimiter", pos)
        fail("Expecting property name enclosed in double quotes", pos)

    stack: list[tuple[dict[str, Json] | list[Json], str]] = []
    # Containers are first handed to json's C scanner whole (fast); one nested too deeply for it
    # is opened here instead, and the next `_SKIP` levels below it are not handed to it again
    # (each would fail the same way), so the scanner's wasted work stays linear in the text.
    # Objects and lists are counted apart: a snapshot nests objects deeply (children), while its
    # lists (graphs, arguments) stay shallow and are best scanned whole at any depth.
    skip_until = {"{": 0, "[": 0}
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    while True:
        char = text[pos] if pos < n else ""
        value: Json
        scanned = False
        if char in ("{", "[") and len(stack) >= skip_until[char]:
            try:
                value, pos = _SCANNER(text, pos)
                scanned = True
            except RecursionError:
                skip_until[char] = len(stack) + _SKIP
            except (StopIteration, ValueError):
                pass  # not valid JSON, or a huge integer: read here, which says where
        if scanned:
            pass
        elif char == "{":
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            if text.startswith("}", pos):
                value, pos = {}, pos + 1
            else:
                key, pos = key_at(pos)
                stack.append(({}, key))
                continue
        elif char == "[":
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            if text.startswith("]", pos):
                value, pos = [], pos + 1
            else:
                stack.append(([], ""))
                continue
        elif char == '"':
            try:
                value, pos = scan(text, pos + 1, True)
            except ValueError as err:
                fail(str(err).split(":")[0], pos)
        else:
            number = _NUMBER.match(text, pos)
            if number is not None and number.end() > pos:
                whole, fraction, exponent = number.groups()
                if fraction or exponent:
                    value = float(number.group())
                else:
                    try:
                        value = int(whole)
                    except ValueError:
                        value = _Token(whole)
                pos = number.end()
            else:
                for word, literal in _LITERALS.items():
                    if text.startswith(word, pos):
                        value, pos = literal, pos + len(word)
                        break
                else:
                    fail("Expecting value", pos)
        # A value is complete: add it to the open containers, closing those that end here.
        while True:
            if not stack:
                pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
                if pos != n:
                    fail("Extra data", pos)
                return value
            container, key = stack[-1]
            if isinstance(container, dict):
                container[key] = value
            else:
                container.append(value)
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            char = text[pos] if pos < n else ""
            if char == ",":
                pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
                if isinstance(container, dict):
                    key, pos = key_at(pos)
                    stack[-1] = (container, key)
                break  # read the next value
            if char == ("}" if isinstance(container, dict) else "]"):
                pos += 1
                stack.pop()
                value = container
                continue
            fail("Expecting ',' delimiter", pos)


# -- reading: checked fields ------------------------------------------------------------------


def _show(value: Json) -> str:
    """A JSON value as a message shows it: its JSON text, shortened, or what kind it is."""
    if isinstance(value, _Token):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys(data: Json, allowed: frozenset[str], required: tuple[str, ...], what: str) -> None:
    if type(data) is not dict:
        raise _Bad(f"{what} is {_show(data)}; it must be a JSON object")
    for field in required:
        if field not in data:
            raise _Bad(f"{what} has no field {field!r}; it is required")
    if len(data) > len(required) and not allowed.issuperset(data):
        unknown = sorted(set(data) - allowed)[0]
        raise _Bad(f"{what} has an unknown field {unknown!r}; the fields are {', '.join(sorted(allowed))}").at(json_key(unknown))


def _items(data: Json, step: str, what: str = "") -> list[tuple[int, Json]]:
    if type(data) is not list:
        raise _Bad(f"{what or step.lstrip('.')} is {_show(data)}; it must be a list").at(step)
    return list(enumerate(data))


def _string(data: Json, what: str) -> str:
    if type(data) is not str:
        raise _Bad(f"{what} is {_show(data)}; it must be a string")
    return data


def _count(data: Json, what: str) -> int:
    if type(data) is not int or not 0 <= data <= MAX_COUNT:
        raise _Bad(f"{what} is {_show(data)}; it must be an integer from 0 to {MAX_COUNT}")
    count: int = data
    return count


def _total(data: Json, what: str) -> int:
    """A plan's figure: a sum of counts, so bounded by `MAX_TOTAL`."""
    if type(data) is not int or not 0 <= data <= MAX_TOTAL:
        raise _Bad(f"{what} is {_show(data)}; it must be an integer from 0 to 2**127 - 1")
    total: int = data
    return total


# Names that stagecut's adapters put into generated Python code, or show on a terminal, may not
# hold quotes, backslashes, or control and line-separator characters.
_UNSAFE = re.compile("[\"\\\\\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]")


def _name(data: Json, what: str, empty: bool = False) -> str:
    text = _string(data, what)
    if not text and not empty:
        raise _Bad(f"{what} is empty; it must be a non-empty name")
    unsafe = _UNSAFE.search(text)
    if unsafe is not None:
        raise _Bad(
            f"{what} {_show(text)} holds {unsafe.group()!r}; names may not hold quotes, backslashes "
            "or control characters"
        )
    return text


def _identifier(data: Json, what: str, stars: bool = False) -> str:
    text = _string(data, what)
    bare = text.lstrip("*") if stars else text
    if len(text) - len(bare) > 2 or not bare.isidentifier() or keyword.iskeyword(bare):
        raise _Bad(f"{what} is {_show(text)}; it must be a Python identifier" + (" (with * or ** before it for *args, **kwargs)" if stars else ""))
    return text


# -- reading: modules -------------------------------------------------------------------------


class _Open:
    """A module whose children are being read (the explicit stack of `_module_tree`)."""

    __slots__ = ("data", "parent", "keys", "next", "built", "key")

    def __init__(self, data: Json, parent: _Open | None, key: str) -> None:
        self.data = data
        self.parent = parent
        self.key = key
        self.next = 0
        self.built: dict[str, Module] = {}
        try:
            _keys(data, _MODULE_KEYS, ("path",), "a module")
            children = data.get("children", {})
            if type(children) is not dict:
                raise _Bad(f"children is {_show(children)}; it must be an object of modules").at(".children")
            for key in children:
                if not key or "." in key:
                    raise _Bad(
                        f"child key {_show(key)} is not a non-empty name without dots (a dot would make "
                        "its path collide with a grandchild's)"
                    ).at(f".children{json_key(key)}")
                _name(key, "child key")
        except _Bad as bad:
            raise self.locate(bad) from None
        self.keys = list(children)

    def locate(self, bad: _Bad) -> _Bad:
        """`bad`, located below this module: its JSON path steps, innermost first."""
        here: _Open | None = self
        while here is not None:
            bad.steps.append(".root" if here.parent is None else json_key(here.key))
            if here.parent is not None:
                bad.steps.append(".children")
            here = here.parent
        return bad


def _module_tree(data: Json) -> Module:
    stack = [_Open(data, None, "")]
    while True:
        top = stack[-1]
        if top.next < len(top.keys):
            key = top.keys[top.next]
            top.next += 1
            stack.append(_Open(top.data["children"][key], top, key))
            continue
        stack.pop()
        try:
            module = _module_in(top.data, top.built)
        except _Bad as bad:
            raise top.locate(bad) from None
        if not stack:
            return module
        stack[-1].built[top.key] = module


def _module_in(data: Json, children: dict[str, Module]) -> Module:
    path = _step(lambda value, what: _name(value, what, empty=True), data, "path")
    type_name = data.get("type", "")
    if type(type_name) is not str:
        raise _Bad(f"type is {_show(type_name)}; it must be a string").at(".type")
    leaf_reason = data.get("leaf_reason")
    if leaf_reason is not None and type(leaf_reason) is not str:
        raise _Bad(f"leaf_reason is {_show(leaf_reason)}; it must be a string or null").at(".leaf_reason")
    graph_data = data.get("graph")
    graph = None if graph_data is None else _graph_in(graph_data, ".graph")
    params_data = data.get("params", {})
    if type(params_data) is not dict:
        raise _Bad(f"params is {_show(params_data)}; it must be an object of parameters").at(".params")
    params = {}
    for local, p in params_data.items():
        try:
            if not local or "." in local:
                raise _Bad(f"parameter name {_show(local)} is not a non-empty name without dots")
            _name(local, "parameter name")
            _keys(p, _PARAM_KEYS, ("key", "numel", "nbytes"), "a parameter")
            buffer = p.get("buffer", False)
            if type(buffer) is not bool:
                raise _Bad(f"buffer is {_show(buffer)}; it must be true or false").at(".buffer")
            params[local] = Param(
                _step(_string, p, "key"), _step(_count, p, "numel"), _step(_count, p, "nbytes"), buffer
            )
        except _Bad as bad:
            raise bad.at(json_key(local)).at(".params") from None
    return Module(path, type_name, graph, pmap(children), pmap(params), leaf_reason)


def _step(read: Callable[[Json, str], Any], data: dict[str, Json], field: str) -> Any:
    """`read(data[field])`, a problem located at the field."""
    try:
        return read(data[field], field)
    except _Bad as bad:
        raise bad.at(json_key(field)) from None


# -- reading: graphs --------------------------------------------------------------------------


def _graph_in(data: Json, step: str, received: bool = False) -> Graph:
    """A graph; with `received` (a plan's stages after the first), placeholders are the values
    the stage receives, named after their nodes, so their targets need not be identifiers."""
    if type(data) is not list:
        raise _Bad(f"graph is {_show(data)}; it must be a list of nodes, or null").at(step)
    nodes = []
    for i, node in enumerate(data):
        try:
            nodes.append(_node_in(node, received))
        except _Bad as bad:
            raise bad.at(f"[{i}]").at(step) from None
    return Graph(tuple(nodes), "json")


def _node_in(data: Json, received: bool = False) -> Node:
    _keys(data, _NODE_KEYS, ("name", "op", "target"), "a node")
    name = _step(_name, data, "name")
    op = data["op"]
    if type(op) is not str or op not in OPS:
        raise _Bad(f"op is {_show(op)}; it must be one of {', '.join(sorted(OPS))}").at(".op")
    target = data["target"]
    try:
        if op == "placeholder" and not received:
            _identifier(target, "a placeholder's target (the parameter's name)", stars=True)
        elif op == "call_method":
            _identifier(target, "a method name")
        elif op in ("call_module", "get_attr"):
            for part in _string(target, "target").split("."):
                _name(part, f"a part of the path {_show(target)}")
        else:
            _name(target, "target")
    except _Bad as bad:
        raise bad.at(".target") from None
    args_data = data.get("args", [])
    if type(args_data) is not list:
        raise _Bad(f"args is {_show(args_data)}; it must be a list").at(".args")
    args = []
    for i, a in enumerate(args_data):
        try:
            args.append(_arg_in(a, 0))
        except _Bad as bad:
            raise bad.at(f"[{i}]").at(".args") from None
    kwargs_data = data.get("kwargs", {})
    if type(kwargs_data) is not dict:
        raise _Bad(f"kwargs is {_show(kwargs_data)}; it must be an object").at(".kwargs")
    kwargs = {}
    for key, value in kwargs_data.items():
        try:
            _identifier(key, "a keyword argument's name")
            kwargs[key] = _arg_in(value, 0)
        except _Bad as bad:
            raise bad.at(json_key(key)).at(".kwargs") from None
    info = data.get("info")
    return Node(name, cast(Op, op), target, tuple(args), pmap(kwargs), None if info is None else _info_in(info))


def _info_in(data: Json) -> ValueInfo:
    try:
        _keys(data, _INFO_KEYS, ("kind",), "value info")
        kind = data["kind"]
        if type(kind) is not str or kind not in VALUE_KINDS:
            raise _Bad(f"kind is {_show(kind)}; it must be one of {', '.join(sorted(VALUE_KINDS))}").at(".kind")
        shape = data.get("shape")
        if shape is not None:
            if type(shape) is not list:
                raise _Bad(f"shape is {_show(shape)}; it must be a list of sizes, or null").at(".shape")
            for d, size in enumerate(shape):
                try:
                    _count(size, f"dimension {d}")
                except _Bad as bad:
                    raise bad.at(f"[{d}]").at(".shape") from None
        dtype = data.get("dtype")
        if dtype is not None:
            _step(_name, data, "dtype")
        nbytes = data.get("nbytes")
        if nbytes is not None:
            _step(_count, data, "nbytes")
    except _Bad as bad:
        raise bad.at(".info") from None
    return ValueInfo(cast(ValueKind, kind), None if shape is None else tuple(shape), dtype, nbytes)


def _arg_in(data: Json, depth: int) -> Arg:
    kind = type(data)
    if data is None or kind is bool or kind is str:
        return cast(Arg, data)
    if kind is int:
        return cast(int, data)
    if kind is float:
        return cast(float, data)
    if isinstance(data, _Token):
        raise _Bad(f"{_show(data)} is not a JSON number stagecut reads; write a float that JSON cannot hold as {{\"float\": \"nan\"}}, {{\"float\": \"inf\"}} or {{\"float\": \"-inf\"}}")
    if kind is not dict or len(data) != 1:
        raise _Bad(
            f"argument {_show(data)} is not a constant or an object with one of the tags "
            "ref, opaque, float, tuple, list, dict, slice"
        )
    if depth >= MAX_ARG_DEPTH:
        raise _Bad(f"the argument is nested more than {MAX_ARG_DEPTH} levels deep")
    ((tag, value),) = data.items()
    try:
        if tag == "ref":
            return Ref(_name(value, "a reference"))
        if tag == "opaque":
            return Opaque(_name(value, "an opaque token"))
        if tag == "float":
            if value not in ("inf", "-inf", "nan"):
                raise _Bad(f"float {_show(value)} is not \"inf\", \"-inf\" or \"nan\"")
            return float(value)
        if tag in ("tuple", "list", "slice"):
            if type(value) is not list:
                raise _Bad(f"{tag} is {_show(value)}; it must be a list")
            if tag == "slice" and len(value) != 3:
                raise _Bad(f"slice has {len(value)} items; it must have 3 (start, stop, step)")
            items = []
            for i, item in enumerate(value):
                try:
                    items.append(_arg_in(item, depth + 1))
                except _Bad as bad:
                    raise bad.at(f"[{i}]") from None
            if tag == "tuple":
                return tuple(items)
            if tag == "list":
                return ListOf(tuple(items))
            return SliceOf(items[0], items[1], items[2])
        if tag == "dict":
            if type(value) is not list:
                raise _Bad(f"dict is {_show(value)}; it must be a list of [key, value] pairs")
            pairs = []
            for i, pair in enumerate(value):
                if type(pair) is not list or len(pair) != 2:
                    raise _Bad(f"dict item {_show(pair)} is not a [key, value] pair").at(f"[{i}]")
                try:
                    pairs.append((_arg_in(pair[0], depth + 1), _arg_in(pair[1], depth + 1)))
                except _Bad as bad:
                    raise bad.at(f"[{i}]") from None
            return DictOf(tuple(pairs))
    except _Bad as bad:
        raise bad.at(f".{tag}") from None
    raise _Bad(f"argument tag {tag!r} is not one of ref, opaque, float, tuple, list, dict, slice").at(json_key(tag))


# -- reading: plans ---------------------------------------------------------------------------


def _stage_in(data: Json, position: int) -> Stage:
    _keys(data, _STAGE_KEYS, tuple(sorted(_STAGE_KEYS)), "a stage")
    index = _step(_count, data, "index")
    names = {field: _names(data[field], field) for field in ("inputs", "outputs", "params", "modules")}
    fig = data["figures"]
    try:
        _keys(fig, _FIGURE_KEYS, tuple(sorted(_FIGURE_KEYS)), "figures")
        figures = StageFigures(
            _step(_total, fig, "params"),
            _step(_total, fig, "param_bytes"),
            None if fig["bytes_in"] is None else _step(_total, fig, "bytes_in"),
            None if fig["bytes_out"] is None else _step(_total, fig, "bytes_out"),
        )
    except _Bad as bad:
        raise bad.at(".figures") from None
    return Stage(
        index=index,
        graph=_graph_in(data["graph"], ".graph", received=position > 0),
        inputs=names["inputs"],
        outputs=names["outputs"],
        params=names["params"],
        modules=names["modules"],
        figures=figures,
    )


def _names(data: Json, field: str) -> tuple[str, ...]:
    out = []
    for i, name in _items(data, f".{field}"):
        try:
            out.append(_name(name, f"a name in {field}"))
        except _Bad as bad:
            raise bad.at(f"[{i}]").at(f".{field}") from None
    return tuple(out)


def _tie_group(data: Json, g: int) -> tuple[tuple[str, int], ...]:
    try:
        members = []
        for m, member in _items(data, "", "a tie group"):
            if type(member) is not list or len(member) != 2:
                raise _Bad(f"tie member {_show(member)} is not a [parameter name, stage] pair").at(f"[{m}]")
            try:
                name = _name(member[0], "a tied parameter's name")
            except _Bad as bad:
                raise bad.at("[0]").at(f"[{m}]") from None
            try:
                stage = _count(member[1], "a tied parameter's stage")
            except _Bad as bad:
                raise bad.at("[1]").at(f"[{m}]") from None
            members.append((name, stage))
    except _Bad as bad:
        raise bad.at(f"[{g}]").at(".ties") from None
    return tuple(members)


def _cut_in(data: Json, k: int) -> Cut:
    try:
        text = _name(data, "a cut")
    except _Bad as bad:
        raise bad.at(f"[{k}]").at(".cuts") from None
    return Cut.parse(text)


__all__ = [
    "PLAN_SCHEMA", "SNAPSHOT_SCHEMA", "module_json_path", "parse_json", "plan_from_json", "plan_to_json",
    "snapshot_from_json", "snapshot_to_json",
]
