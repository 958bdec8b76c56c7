"""The model's hooks on stage modules, as the seed's `transfer_hooks` does, and more.

- The root's forward pre-hooks and backward hooks run on the first stage (they see the model's
  inputs); its forward hooks run on the last stage (they see the model's output). Each is
  called with the model as its module, as in one model call.
- Hooks on modules a stage calls whole keep working: the stage calls the module itself.
- A module inlined because a cut lies inside it is never called as a module, so its hooks
  cannot run: `stage_modules` warns once per such hook, naming module and hook.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import fx, nn

from core import Plan


HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_pre_hooks",
    "_backward_hooks",
)


@contextmanager
def hooks_off(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The hooks of `modules` (not of their children) do not run inside the block; every table
    is put back on exit. A snapshot turns off the root's (they move to the stages) and, under
    export, those of the modules it traces or records as one call (export would trace them)."""
    saved = []
    for module in modules:
        for table in HOOK_TABLES:
            hooks = getattr(module, table)
            if hooks:
                saved.append((hooks, dict(hooks)))
                hooks.clear()
    try:
        yield
    finally:
        for hooks, items in saved:
            hooks.update(items)


class DroppedHookWarning(UserWarning):
    """A hook of a module that the plan inlines will not run."""


def transfer_root_hooks(model: nn.Module, stages: Sequence[fx.GraphModule]) -> None:
    first, last = stages[0], stages[-1]
    for hook_id, hook in model._forward_pre_hooks.items():
        with_kwargs = hook_id in model._forward_pre_hooks_with_kwargs
        first.register_forward_pre_hook(_as_model(model, hook), with_kwargs=with_kwargs)
    for hook_id, hook in model._forward_hooks.items():
        with_kwargs = hook_id in model._forward_hooks_with_kwargs
        always = hook_id in model._forward_hooks_always_called
        last.register_forward_hook(_as_model(model, hook), with_kwargs=with_kwargs, always_call=always)
    for hook in model._backward_pre_hooks.values():
        first.register_full_backward_pre_hook(_as_model(model, hook))
    for hook in model._backward_hooks.values():
        first.register_full_backward_hook(_as_model(model, hook))


def warn_dropped_hooks(plan: Plan, model: nn.Module) -> None:
    """Warn for each hook of a non-root module that the plan inlines (a cut lies inside it)."""
    hooked: dict[str, nn.Module] = {}
    for cut in plan.cuts:
        # Down the way to the cut, one step per level (a path is spelled out only for a module
        # with hooks: the paths of a deep spine are as long as it is deep).
        parts = cut.path.split(".")[:-1]
        module = model
        for i, part in enumerate(parts):
            child = module._modules.get(part)
            module = child if child is not None else module.get_submodule(part)
            if any(getattr(module, kind) for kind in HOOK_TABLES):
                hooked.setdefault(".".join(parts[: i + 1]), module)
    for path, module in sorted(hooked.items()):
        for kind in HOOK_TABLES:
            for hook in getattr(module, kind).values():
                name = getattr(hook, "__qualname__", repr(hook))
                warnings.warn(
                    f"{path}: the hook {name} ({kind.strip('_').replace('_', ' ')[:-1]}) will not run: a cut "
                    "lies inside this module, so its code is inlined into the stages and it is never "
                    "called as a module. Move the hook to a module the stages call whole.",
                    DroppedHookWarning,
                    stacklevel=3,
                )


def _as_model(model: nn.Module, hook: Callable[..., Any]) -> Callable[..., Any]:
    """The hook called with the model in place of the stage module."""

    def call(_stage: nn.Module, *rest: Any) -> Any:
        return hook(model, *rest)

    return call
