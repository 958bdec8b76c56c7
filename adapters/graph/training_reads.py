"""Does a module's own code read `self.training`? Watched while it is traced."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


@contextmanager
def watch_training(module: nn.Module) -> Iterator[list[bool]]:
    """Yields a list that gets an entry each time `module.training` is read in the block.

    The module's class is swapped for a subclass whose `training` is a property (a data
    descriptor wins over the instance dict); its behaviour is otherwise unchanged, and the
    class is put back on exit."""
    reads: list[bool] = []
    cls = type(module)

    def get(self: nn.Module) -> Any:
        if self is module:
            reads.append(True)
        return self.__dict__["training"]

    def put(self: nn.Module, value: Any) -> None:
        self.__dict__["training"] = value

    module.__class__ = type(
        cls.__name__, (cls,), {"training": property(get, put), "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    )
    try:
        yield reads
    finally:
        module.__class__ = cls
