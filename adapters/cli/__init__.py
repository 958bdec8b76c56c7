"""The `stagecut` command line: `plan`, `inspect`, `snapshot` and `train`.

Exit codes: 0 success; 2 bad usage or a `PlanError` (one line on stderr, no traceback);
1 an internal error (with its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from core.errors import PlanError

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
    try:
        code: int = ns.run(ns)
        sys.stdout.flush()
    except (UsageError, PlanError) as err:
        print(f"stagecut: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stagecut: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stagecut plan | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
