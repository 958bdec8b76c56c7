"""Reading and writing the files named on the command line; OS errors become `UsageError`s."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from adapters.cli.errors import UsageError


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {what} {path!r}: {getattr(err, 'strerror', None) or err}") from err


def write(path: str, what: str, save: Callable[[Path], object]) -> None:
    """Create the parent folders, call `save(path)`, and say so on stderr."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        save(target)
    except OSError as err:
        raise UsageError(f"cannot write {what} {path!r}: {err.strerror or err}") from err
    print(f"stagecut: wrote {what} {path}", file=sys.stderr)


def write_text(path: str, what: str, text: str) -> None:
    write(path, what, lambda p: p.write_text(text, encoding="utf-8"))
