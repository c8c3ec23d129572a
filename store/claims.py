"""Claims: at most one writer per video, across processes, runs and machines sharing a file system.

A claim is an exclusive ``flock`` on ``STORE/.glimpse-claims/<key>.lock``, held for as long as the
video is being written. The kernel drops it the moment its holder dies (SIGKILL, segfault, lost
machine on a local mount), so a crash never blocks a video: there are no expiry times to tune.
The lock file itself holds who claimed it (host, pid, time), for people and ``store gc``.

Claims need a POSIX file system (local disks; NFS v4 with working locks). Stores reached through
fsspec URLs are read-only and need none.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLAIMS_DIR = ".glimpse-claims"
CREATE_LOCK = "create.lock"


def claims_dir(store_path: str | Path) -> Path:
    return Path(store_path) / CLAIMS_DIR


@contextmanager
def _flock(path: Path, blocking: bool) -> Iterator[int | None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)  # closing drops the lock


@contextmanager
def claim_video(store_path: str | Path, key: str, note: str = "") -> Iterator[bool]:
    """Try to claim video ``key`` of the store; yields True when this process holds it, False when another does.

    The claim lasts until the ``with`` block ends or the process dies.
    """
    with _flock(claims_dir(store_path) / f"{key}.lock", blocking=False) as fd:
        if fd is None:
            yield False
            return
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "note": note}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        try:
            yield True
        finally:
            os.ftruncate(fd, 0)


def is_claimed(store_path: str | Path, key: str) -> bool:
    """Whether a live process holds video ``key``'s claim right now."""
    path = claims_dir(store_path) / f"{key}.lock"
    if not path.exists():
        return False
    with _flock(path, blocking=False) as fd:
        return fd is None


@contextmanager
def creation_lock(store_path: str | Path) -> Iterator[None]:
    """Serialize creating (or checking) a store, so two runs started together agree on one store."""
    with _flock(claims_dir(store_path) / CREATE_LOCK, blocking=True):
        yield
