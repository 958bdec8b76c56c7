"""A one-line progress bar on stderr while a model is traced; silent when stderr is not a terminal.

    progress = Progress()
    progress.start("tracing", total=40)
    snapshot(model, *args, progress=progress)   # called with each module path as it is traced
    progress.status("propagating shapes")
    progress.close()                             # clears the line
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

_BAR = 20
_INTERVAL_S = 0.05  # redraw at most this often


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self._label = ""
        self._total: int | None = None
        self._count = 0
        self._drawn_at = 0.0
        self._width = 0  # characters on the line now

    def start(self, label: str, total: int | None = None) -> None:
        """Begin a phase of `total` steps (unknown: a counter without a bar)."""
        self._label, self._total, self._count = label, total, 0
        self._draw("", force=True)

    def __call__(self, item: str) -> None:
        """One step done, working on `item` (a module path)."""
        self._count += 1
        self._draw(item, force=False)

    def status(self, label: str) -> None:
        """A phase without steps: just its name."""
        self._label, self._total, self._count = label, None, -1
        self._draw("", force=True)

    def close(self) -> None:
        """Erase the line, so what follows starts on a clean one."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0

    def _draw(self, item: str, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < _INTERVAL_S:
            return
        self._drawn_at = now
        text = f"stagecut: {self._label}"
        if self._total:
            done = min(self._count, self._total)
            filled = _BAR * done // self._total
            text += f" [{'#' * filled}{'.' * (_BAR - filled)}] {done}/{self._total}"
        elif self._count >= 0:
            text += f" {self._count}"
        text = f"{text} {item}"[: shutil.get_terminal_size((80, 24)).columns - 1]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False
