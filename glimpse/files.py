"""Writing a file so that a reader, a crash or a kill never sees half of it: the one atomic write of glimpse; and
the fingerprint of a source file, which survives copying the file to another disk.

The bytes go to a temporary file beside the target, are flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows), and the folder is fsynced so that the rename survives a power
loss. Run directories, evaluation results and tables all go through here; :func:`atomic_link` gives a complete
file a second name the same way (a checkpoint that is both last.pt and best.pt, last.pt kept as last.prev.pt).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write in pieces that appears at ``path`` only when complete (its folder made if missing).

    For large files written as a stream (the training cache); an error inside the block leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _sync_folder(path.parent)


def atomic_link(source: str | Path, target: str | Path) -> Path:
    """Give the complete file ``source`` the second name ``target`` at once: a hard link under a temporary name,
    renamed over ``target``, so a reader of ``target`` sees its old bytes or ``source``'s, never half a file."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.link{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    try:
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _sync_folder(target.parent)
    return target


def publish_folder(staging: str | Path, target: str | Path, last: str) -> None:
    """Move every entry of the folder ``staging`` into the folder ``target``, the entry named ``last`` after all the
    others, then remove ``staging``: a reader that finds ``target/last`` finds the rest (a new store's root metadata
    is ``last``). Both folders must be on one file system."""
    staging, target = Path(staging), Path(target)
    for item in staging.iterdir():
        if item.name != last:
            os.replace(item, target / item.name)
    os.replace(staging / last, target / last)
    staging.rmdir()
    _sync_folder(target)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere a no-op)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (its folder made if missing) so that nobody ever sees half a file."""
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8 (line ends as given, on every platform)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


#: Bytes read at the start, middle and end of a file for its fingerprint.
FINGERPRINT_BLOCK = 64 * 1024


def fingerprint(path: str | Path) -> str | None:
    """``"<size>:<sha256 of the first, middle and last 64 KiB>"`` of the file at ``path``, None when it cannot be
    read. The same bytes give the same fingerprint wherever the file lies; any edit to its size or to a sampled
    block (a re-encoded or truncated video, another video under the same name) changes it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256()
            for offset in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
                f.seek(offset)
                digest.update(f.read(FINGERPRINT_BLOCK))
    except OSError:
        return None
    return f"{size}:{digest.hexdigest()[:32]}"
