"""Reading and writing the files named on the command line; OS errors become `UsageError`s.

Every file is written atomically: into a temporary file beside it, flushed to disk, then renamed
over the target. An interrupted run (Ctrl-C, a kill, a full disk) leaves the old file or the new
one, never a partial one, and no temporary file behind (except after SIGKILL or a power cut:
then a `.<name>.tmp*` file may remain, and the target is still whole).
"""

from __future__ import annotations

import os
import secrets
import stat
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
    """Create the parent folders, call `save` on a temporary file beside `path` and rename it
    to `path` once it is complete, and say so on stderr. A target that is not a regular file
    (`/dev/stdout`, a pipe) is written in place: it cannot be replaced."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if _special(target):
            save(target)
        else:
            atomic_write(target, save)
    except OSError as err:
        raise UsageError(f"cannot write {what} {path!r}: {err.strerror or err}") from err
    print(f"stagecut: wrote {what} {path}", file=sys.stderr)


def write_text(path: str, what: str, text: str) -> None:
    write(path, what, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write(target: Path, save: Callable[[Path], object]) -> None:
    """`save(temporary)`, then the temporary file renamed over `target` (one `rename`, atomic
    on POSIX within a file system). The temporary file keeps the target's suffix (a writer may
    choose the format by it) and gets the target's permissions, or the umask's for a new file.
    On any exception, KeyboardInterrupt included, it is removed and the target left as it was."""
    temporary = target.with_name(f".{target.stem}.tmp{secrets.token_hex(4)}{target.suffix}")
    mode = _mode_for(target)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.close(descriptor)
        save(temporary)
        with open(temporary, "rb+") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        os.chmod(temporary, mode)  # a writer that recreated the file may have changed it
        os.replace(temporary, target)
    except BaseException:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass
        raise
    _sync_folder(target.parent)


def _special(target: Path) -> bool:
    try:
        return not stat.S_ISREG(target.stat().st_mode)
    except FileNotFoundError:
        return False


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform opens folders)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
