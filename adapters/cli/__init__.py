"""The `stagecut` command line: `plan`, `inspect`, `snapshot` and `train`.

Exit codes: 0 success; 2 bad usage or a `PlanError` (one line on stderr, no traceback);
1 an internal error (with its traceback).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from core.errors import PlanError, printable

from adapters.cli import inspect_command, plan_command, snapshot_command, train_command
from adapters.cli.errors import UsageError

__all__ = ["UsageError", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as for every other usage error (argparse prints the usage too)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="stagecut",
        description="Cut a PyTorch model into pipeline-parallel stages. "
        "`stagecut plan` plans the built-in GPT-like example into 4 stages.",
    )
    commands = top.add_subparsers(title="commands", metavar="COMMAND", required=True)
    plan_command.add_parser(commands)
    inspect_command.add_parser(commands)
    snapshot_command.add_parser(commands)
    train_command.add_parser(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if sys.stdout is None:  # started with standard output closed (`stagecut plan >&-`)
        print("stagecut: error: standard output is closed; run it with somewhere to print to", file=sys.stderr)
        return 1
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        code: int = ns.run(ns)
        sys.stdout.flush()
    except (UsageError, PlanError) as err:
        print(f"stagecut: error: {printable(' '.join(str(err).split()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stagecut: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stagecut plan | head`: the reader left; not an error
        _drop(stdout)
        return 0
    except StdoutFailed as err:  # `stagecut plan > /dev/full`: one line, not a traceback
        print(f"stagecut: error: cannot write to standard output: {err}", file=sys.stderr)
        _drop(stdout)
        return 1
    finally:
        sys.stdout = stdout
    return code


class StdoutFailed(Exception):
    """Standard output refused a write (full, closed, gone): exit code 1 with one line."""


class _Stdout:
    """Standard output as the commands see it: text shown with its terminal control characters
    escaped (a snapshot's type names and reasons are data, and must not drive the terminal),
    and a failing write turned into `StdoutFailed`. JSON output is unchanged: json.dumps escapes
    control characters itself."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(_CONTROL.sub(_escape, text))
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as err:
            raise StdoutFailed(_reason(err)) from err

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as err:
            raise StdoutFailed(_reason(err)) from err

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# Control characters but newline and tab (C0, DEL, C1), and the bidirectional overrides.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    return printable(match.group())


def _reason(err: OSError | ValueError) -> str:
    return (err.strerror if isinstance(err, OSError) else None) or str(err)


def _drop(stream: TextIO) -> None:
    """Point standard output at /dev/null, so that what is still buffered does not fail again
    (with a second message) when Python exits."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass
