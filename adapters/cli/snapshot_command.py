"""`stagecut snapshot`: trace a model and write its snapshot JSON, for `plan --snapshot` or another scheduler."""

from __future__ import annotations

import argparse
from typing import Any

from adapters.cli import files, snapshot_source
from adapters.cli.progress import Progress

DESCRIPTION = """\
Trace a model (every module fx can trace) with shape propagation, and write the
snapshot as JSON (docs/snapshot-schema.md). `stagecut plan --snapshot FILE` plans it
without torch.
"""


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("snapshot", help="write a model's snapshot JSON", description=DESCRIPTION)
    snapshot_source.add_arguments(parser)
    parser.add_argument("--out", metavar="FILE", help="where to write it (default: standard output)")
    parser.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    text = snapshot_source.load(ns, Progress()).snapshot.to_json()
    if ns.out is None:
        print(text)
    else:
        files.write_text(ns.out, "snapshot", text)
    return 0
