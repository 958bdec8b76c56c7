"""Snapshot and Plan as versioned JSON, so other schedulers can use the core without torch.

The schema is documented in docs/snapshot-schema.md.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

from pyrsistent import pmap

from core.cuts import Cut
from core.errors import MalformedSnapshot
from core.graph import OPS, Arg, DictOf, Graph, ListOf, Node, Op, Opaque, Ref, SliceOf, ValueInfo
from core.plan import Plan, Stage, StageFigures
from core.snapshot import Module, Param, Snapshot

SNAPSHOT_SCHEMA = "stagecut.snapshot/1"
PLAN_SCHEMA = "stagecut.plan/1"
Json = Any  # what json.loads returns


def snapshot_to_json(snapshot: Snapshot) -> str:
    out: dict[str, Json] = {"schema": SNAPSHOT_SCHEMA, "root": _module_out(snapshot.root)}
    if snapshot.tracer:
        out["tracer"] = snapshot.tracer
    return json.dumps(out, allow_nan=False)


def snapshot_from_json(text: str) -> Snapshot:
    data = _load(text, SNAPSHOT_SCHEMA)
    if "root" not in data:
        raise MalformedSnapshot("snapshot JSON: missing field 'root'.")
    tracer = data.get("tracer", "")
    if not isinstance(tracer, str):
        raise MalformedSnapshot(f"snapshot JSON: field 'tracer' must be a string, found {tracer!r}.")
    return Snapshot(_module_in(data["root"]), tracer)


def plan_to_json(plan: Plan) -> str:
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


def plan_from_json(text: str) -> Plan:
    data = _load(text, PLAN_SCHEMA)
    try:
        return Plan(
            stages=tuple(_stage_in(s) for s in data["stages"]),
            ties=tuple(tuple((str(n), int(s)) for n, s in g) for g in data["ties"]),
            cuts=tuple(Cut.parse(c) for c in data["cuts"]),
            tracer=str(data.get("tracer", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MalformedSnapshot(f"plan JSON: missing or malformed field ({err!r}).") from err


def _load(text: str, schema: str) -> Json:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedSnapshot(f"not valid JSON: {err}") from err
    found = data.get("schema") if isinstance(data, dict) else None
    if found != schema:
        raise MalformedSnapshot(f"expected schema {schema!r}, found {found!r}; was it written by stagecut?")
    return data


# -- arguments ------------------------------------------------------------------------------


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


def _arg_in(data: Json) -> Arg:
    if data is None or isinstance(data, (bool, int, float, str)):
        return cast(Arg, data)
    if isinstance(data, dict) and len(data) == 1:
        (tag, value), = data.items()
        if tag == "ref":
            return Ref(str(value))
        if tag == "opaque":
            return Opaque(str(value))
        if tag == "float":
            return float(value)
        if tag == "tuple":
            return tuple(_arg_in(a) for a in value)
        if tag == "list":
            return ListOf(tuple(_arg_in(a) for a in value))
        if tag == "dict":
            return DictOf(tuple((_arg_in(k), _arg_in(v)) for k, v in value))
        if tag == "slice":
            start, stop, step = value
            return SliceOf(_arg_in(start), _arg_in(stop), _arg_in(step))
    raise MalformedSnapshot(f"cannot read argument {data!r}")


# -- nodes, graphs, modules ------------------------------------------------------------------


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


def _node_in(data: Json) -> Node:
    op = data["op"]
    if op not in OPS:
        raise MalformedSnapshot(f"node {data.get('name')!r} has unknown op {op!r}")
    info = data.get("info")
    return Node(
        name=str(data["name"]),
        op=cast(Op, op),
        target=str(data["target"]),
        args=tuple(_arg_in(a) for a in data.get("args", ())),
        kwargs=pmap({str(k): _arg_in(v) for k, v in data.get("kwargs", {}).items()}),
        info=None
        if info is None
        else ValueInfo(
            kind=info["kind"],
            shape=None if info.get("shape") is None else tuple(int(d) for d in info["shape"]),
            dtype=info.get("dtype"),
            nbytes=info.get("nbytes"),
        ),
    )


def _graph_out(graph: Graph) -> Json:
    return [_node_out(n) for n in graph.nodes]


def _graph_in(data: Json) -> Graph:
    return Graph(tuple(_node_in(n) for n in data))


def _module_out(module: Module) -> Json:
    return {
        "path": module.path,
        "type": module.type_name,
        "graph": None if module.graph is None else _graph_out(module.graph),
        "leaf_reason": module.leaf_reason,
        "params": {
            name: {"key": p.key, "numel": p.numel, "nbytes": p.nbytes, "buffer": p.buffer}
            for name, p in sorted(module.params.items())
        },
        "children": {name: _module_out(child) for name, child in module.ordered_children()},
    }


def _module_in(data: Json) -> Module:
    try:
        return Module(
            path=str(data["path"]),
            type_name=str(data.get("type", "")),
            graph=None if data.get("graph") is None else _graph_in(data["graph"]),
            children=pmap({str(k): _module_in(v) for k, v in data.get("children", {}).items()}),
            params=pmap(
                {
                    str(k): Param(str(p["key"]), int(p["numel"]), int(p["nbytes"]), bool(p.get("buffer", False)))
                    for k, p in data.get("params", {}).items()
                }
            ),
            leaf_reason=data.get("leaf_reason"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MalformedSnapshot(f"snapshot JSON: missing or malformed field ({err!r}).") from err


# -- plans -----------------------------------------------------------------------------------


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


def _stage_in(data: Json) -> Stage:
    fig = data["figures"]
    return Stage(
        index=int(data["index"]),
        graph=_graph_in(data["graph"]),
        inputs=tuple(data["inputs"]),
        outputs=tuple(data["outputs"]),
        params=tuple(data["params"]),
        modules=tuple(data["modules"]),
        figures=StageFigures(fig["params"], fig["param_bytes"], fig["bytes_in"], fig["bytes_out"]),
    )
