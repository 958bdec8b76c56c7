"""`--hf-config FILE`: a Hugging Face transformers model built from its config on the meta device.

The config is a local `config.json` (or a folder holding one), read without the network: the
JSON's `model_type` picks the config class (`AutoConfig.for_model`), and the model is
`AutoModelForCausalLM.from_config` under `torch.device("meta")` (`adapters.hf_models.build_on_meta`),
so no memory goes to weights. Its dtype is the config's (`dtype`, or `torch_dtype` in older
files), float32 when it names none. `use_cache` is turned off: a plan is for training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapters.cli import files
from adapters.cli.errors import UsageError
from adapters.cli.model_source import ModelSource

INSTALL = "pip install 'stagecut[hf]'"
# The `-o KEY=VALUE` options --hf-config takes: the shape of the example inputs.
OPTIONS = ("batch", "seq")


def load(path: str, options: Mapping[str, Any]) -> ModelSource:
    """The model of the config at `path` on the meta device, with meta example inputs."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"--hf-config takes only -o batch=N and -o seq=N (the example inputs), not -o {unknown[0]}")
    for key, value in options.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"-o {key}={value!r}: expected a positive integer")
    data = _read(path)
    config = _config(path, data)
    from adapters.hf_models import build_on_meta

    try:
        example = build_on_meta(config, **options)
    except ValueError as err:  # AutoModelForCausalLM knows no model for this config
        raise UsageError(f"--hf-config {path}: {' '.join(str(err).split())}") from err
    dtype = next((str(p.dtype).removeprefix("torch.") for p in example.model.parameters()), "no parameters")
    return ModelSource(path, f"{example.description}, {dtype}", example.model, example.args, dict(example.kwargs))


def _read(path: str) -> dict[str, Any]:
    file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    text = files.read_text(str(file), "transformers config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--hf-config {path}: not JSON ({err})") from err
    if not isinstance(data, dict):
        raise UsageError(f"--hf-config {path}: expected a JSON object, found {type(data).__name__}")
    if not isinstance(data.get("model_type"), str):
        raise UsageError(f"--hf-config {path}: no \"model_type\" field; a transformers config.json names its model type")
    return data


def _config(path: str, data: dict[str, Any]) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    transformers = _transformers()
    transformers.logging.set_verbosity_error()  # no deprecation chatter about old config fields
    try:
        config = transformers.AutoConfig.for_model(**data)
    except (ValueError, TypeError, KeyError) as err:
        raise UsageError(f"--hf-config {path}: {' '.join(str(err).split())}") from err
    config.use_cache = False
    return config


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise UsageError(f"--hf-config needs the transformers package, which is not installed: {INSTALL}") from err
    return transformers
