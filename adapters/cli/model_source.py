"""Where `--model` comes from: a built-in example, `package.module:factory` or `path/file.py:factory`.

A factory is called with the `-o KEY=VALUE` options as keyword arguments and returns
`(model, args)`, `(model, args, kwargs)`, or an object with `model`, `args` (and optionally
`kwargs`) attributes, such as `adapters.examples.Example`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

DEFAULT_MODEL = "gpt"
# Options the command line gives a built-in example unless told otherwise:
# 8 blocks, so that the default 4 stages hold 2 blocks each.
DEFAULT_OPTIONS: Mapping[str, Mapping[str, Any]] = {"gpt": {"n_layers": 8}}
SPEC_FORMS = "a built-in example ({names}), package.module:factory or path/to/file.py:factory"


@dataclass(frozen=True)
class ModelSource:
    name: str
    description: str
    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """`["n_layers=12", "dtype=torch.float16", "name=x"]` -> values as Python literals where they parse."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"option {item!r}: expected KEY=VALUE with KEY a Python name")
        options[key] = _value(key, text)
    return options


def _value(key: str, text: str) -> Any:
    if text.startswith("torch.") or key == "dtype":
        import torch

        found = getattr(torch, text.removeprefix("torch."), None)
        if found is None:
            raise UsageError(f"option {key}={text}: torch has no attribute {text.removeprefix('torch.')!r}")
        return found
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string


def load(spec: str, options: Mapping[str, Any]) -> ModelSource:
    """Build the model named by `spec`; every way of getting it wrong is a `UsageError`.

    So is an `ImportError` the factory raises (a package the model needs is missing), and a
    `ValueError` or `TypeError` it raises when given options: the options are taken to be wrong
    (the message says where it was raised). Any other exception, or one raised with no options
    given, is the factory's own bug and keeps its traceback.
    """
    if ":" not in spec:
        return _builtin(spec, options)
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise UsageError(f"--model {spec!r}: expected {_forms()}")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    owner = _import_file(spec, target) if is_file else _import_module(spec, target)
    factory: Any = owner
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise UsageError(f"--model {spec}: {target!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    return _call(spec, factory, options)


def _forms() -> str:
    from adapters.examples import EXAMPLES

    return SPEC_FORMS.format(names=", ".join(EXAMPLES))


def _builtin(name: str, options: Mapping[str, Any]) -> ModelSource:
    from adapters.examples import EXAMPLES, check_options

    factory = EXAMPLES.get(name)
    if factory is None:
        raise UsageError(f"--model {name!r}: unknown model; give {_forms()}")
    try:
        check_options(name, options)
        return _call(name, factory, {**DEFAULT_OPTIONS.get(name, {}), **options})
    except ValueError as err:  # the examples reject inconsistent options this way
        raise UsageError(f"--model {name}: {err}") from err


def _import_module(spec: str, name: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would, so `mymodels:make` works from here
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = getattr(err, "name", None)
        if missing and (name == missing or name.startswith(missing + ".")):
            raise UsageError(f"--model {spec}: no module named {missing!r} (is it installed, or on PYTHONPATH?)") from err
        raise UsageError(f"--model {spec}: importing {name!r} failed: {err}") from err


def _import_file(spec: str, name: str) -> Any:
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"--model {spec}: no file {name!r}")
    module_name = f"stagecut_user_{path.stem}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise UsageError(f"--model {spec}: {name!r} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    try:
        loader.loader.exec_module(module)
    except ImportError as err:
        raise UsageError(f"--model {spec}: importing {name!r} failed: {err}") from err
    return module


def _is_module(value: object) -> bool:
    """Whether `value` is an nn.Module, without importing torch when nothing has yet."""
    if "torch" not in sys.modules:
        return False
    from torch import nn

    return isinstance(value, nn.Module)


def _check_options(where: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C function: let the call decide
    try:
        signature.bind(**options)
    except TypeError as err:
        takes = [p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        known = f"; it takes {', '.join(takes)}" if takes else "; it takes no options"
        raise UsageError(f"{where}: bad options ({err}){known}") from err


def _shown(options: Mapping[str, Any]) -> str:
    return " ".join(f"-o {key}={value!r}" for key, value in options.items())


def _origin(err: BaseException) -> str:
    """Where `err` was raised, as `ValueError at file.py:12`, so a bug is still easy to find."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(err).__name__}{where}"


def _call(spec: str, factory: Any, options: Mapping[str, Any]) -> ModelSource:
    where = f"--model {spec}"
    if not callable(factory) or _is_module(factory):
        raise UsageError(f"{where}: is of type {type(factory).__name__!r}, not a factory; point at a function returning (model, args)")
    _check_options(where, factory, options)
    try:
        result = factory(**options)
    except ImportError as err:  # a package the model needs is missing (adapters.hf_models names its extra)
        raise UsageError(f"{where}: {' '.join(str(err).split())}") from err
    except (ValueError, TypeError) as err:
        if not options:
            raise  # no options to blame: a bug in the factory, shown with its traceback
        raise UsageError(f"{where}: {' '.join(str(err).split())} ({_origin(err)}, with {_shown(options)})") from err
    if isinstance(result, tuple) and len(result) in (2, 3):
        model, args, kwargs = (*result, None) if len(result) == 2 else result
    elif hasattr(result, "model") and hasattr(result, "args"):
        model, args, kwargs = result.model, result.args, getattr(result, "kwargs", None)
    else:
        raise UsageError(
            f"{where} returned a value of type {type(result).__name__!r}; expected (model, args), (model, args, kwargs) "
            "or an object with model, args and kwargs attributes"
        )
    from torch import nn

    if not isinstance(model, nn.Module):
        raise UsageError(f"{where}: the model it returned is of type {type(model).__name__!r}, not a torch.nn.Module")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise UsageError(f"{where}: the kwargs it returned are of type {type(kwargs).__name__!r}, not a mapping")
    doc = (inspect.getdoc(factory) or "").strip().splitlines()
    description = getattr(result, "description", None) or (doc[0] if doc else f"{type(model).__name__} from {spec}")
    return ModelSource(
        spec,
        description,
        model,
        tuple(args) if isinstance(args, (tuple, list)) else (args,),
        dict(kwargs or {}),
    )
