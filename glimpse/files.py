"""Writing a file so that a reader, a crash or a kill never sees half of it: the one atomic write of glimpse.

The bytes go to a temporary file beside the target, are flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows), and the folder is fsynced so that the rename survives a power
loss. Run directories, evaluation results and tables all go through here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (its folder made if missing) so that nobody ever sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8 (line ends as given, on every platform)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
