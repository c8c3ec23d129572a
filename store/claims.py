"""Claims: at most one writer per video, across processes, runs and machines sharing a store.

Two backends hold them; a run chooses one (``--claims``), the callers never do: :func:`claim_video`,
:func:`is_claimed`, :func:`store_lock` and :func:`creation_lock` ask this process's setting.

``flock`` (the default of a process): an exclusive ``flock`` on ``STORE/.glimpse-claims/<key>.lock``, held while the
video is written. The kernel drops it the moment its holder dies (SIGKILL, segfault, lost machine on a local mount),
so a crash never blocks a video: no expiry times to tune. The lock file holds who claimed it (host, pid, time), for
people and ``store gc``. It needs a file system whose locks every machine sees (local disks, NFS v4 with working
locks). Where ``flock`` fails (Lustre mounted ``noflock``, some NFS: ENOLCK, EOPNOTSUPP, ENOSYS, EINVAL), a claim is
refused in one line (:class:`ClaimsUnsupported`).

``scheduler``: a lease on the Dask scheduler the run uses (``distributed.Semaphore`` with one lease, named after the
store's absolute path and the video key; nothing is written on disk). The holder's process refreshes it; a holder
that dies loses it after ``distributed.scheduler.locks.lease-timeout`` (30 s by default: a killed worker's videos wait
that long), checked every ``lease-validation-interval``. It keeps apart only the runs that use that scheduler (a run
on its own LocalCluster has a scheduler of its own: share one with ``--scheduler``), and every machine must mount the
store at the same path. A holder that keeps the GIL for longer than the lease timeout loses its lease (Dask's
warning about overbooking). A video's semaphore is closed when its claim ends, so the scheduler keeps none of a
finished video; a claim granted in the instant between another's release and that close would be closed with it.

``auto`` (a run's default) is ``flock`` where it works on the store's file system (:func:`flock_unsupported`), else
``scheduler``. Extraction sets the process's backend (:func:`claims_on` in its client, :func:`hold_claims_on` in its
workers); maintenance commands without a Dask client (``store gc``, ``repair``'s reset) use ``flock``. Stores reached
through fsspec URLs are read-only and need no claims.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

from glimpse.store.schema import StoreError

CLAIMS_DIR = ".glimpse-claims"
CREATE_LOCK = "create.lock"

FLOCK, SCHEDULER = "flock", "scheduler"
#: The claims backends a run chooses among (``--claims``): auto is flock where the store's file system supports it.
CLAIMS = ("auto", FLOCK, SCHEDULER)

#: errno values of an ``flock`` the file system does not support (as opposed to one another process holds).
FLOCK_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


class ClaimsUnsupported(StoreError):
    """The store's file system does not support ``flock``, and this process has no Dask scheduler to claim on."""


# ---------------------------------------------------------------------------------------------- this process's backend

_process_server: Any = None  # a dask Worker or Client whose scheduler holds this process's claims; None: flock
_thread = threading.local()  # .server: the same for one thread (an extraction client), over the process's
_UNSET = object()


def hold_claims_on(server: Any) -> None:
    """Hold this process's claims on the scheduler of ``server`` (a ``distributed`` Worker or Client: anything with
    ``.scheduler`` and ``.loop``), or on flock when None. Workers call it once per task (:func:`worker_setup`)."""
    global _process_server
    _process_server = server


@contextmanager
def claims_on(server: Any) -> Iterator[None]:
    """In this thread, for the block: claims on the scheduler of ``server`` (None: flock); what was set before is
    restored after it, so that two runs in two threads of one process each keep their own."""
    before = getattr(_thread, "server", _UNSET)
    _thread.server = server
    try:
        yield
    finally:
        _thread.server = before


def _server() -> Any:
    """The Worker or Client whose scheduler holds claims in this thread (None: flock)."""
    server = getattr(_thread, "server", _UNSET)
    return _process_server if server is _UNSET else server


def flock_unsupported(store_path: str | Path) -> str | None:
    """Why ``flock`` does not work on the file system of the store at ``store_path`` (its claims folder, else the
    nearest folder above it that exists: a store not yet made is left untouched), or None where it works."""
    where = Path(os.path.abspath(claims_dir(store_path)))
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        with tempfile.TemporaryFile(dir=where) as probe:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:  # where no file can be made, the store's own checks say why, in their words
        if err.errno in FLOCK_UNSUPPORTED:
            return f"flock on {where}: {os.strerror(err.errno)}"
    return None


# ---------------------------------------------------------------------------------------------- the entry points


def claims_dir(store_path: str | Path) -> Path:
    return Path(store_path) / CLAIMS_DIR


@contextmanager
def claim_video(store_path: str | Path, key: str, note: str = "") -> Iterator[bool]:
    """Try to claim video ``key`` of the store; yields True when this process holds it, False when another does.

    The claim lasts until the ``with`` block ends or its holder dies (flock: at once; scheduler: after the lease
    timeout).
    """
    server = _server()
    if server is not None:
        with _lease(server, _lease_name("claim", store_path, key), blocking=False, close=True) as held:
            yield held
        return
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
    if _server() is not None:
        with claim_video(store_path, key, note="is_claimed") as held:
            return not held
    path = claims_dir(store_path) / f"{key}.lock"
    if not path.exists():
        return False
    with _flock(path, blocking=False) as fd:
        return fd is None


@contextmanager
def store_lock(lock_file: str | Path) -> Iterator[None]:
    """Hold the store-wide lock ``lock_file`` (an flock on that file, or a lease named after its absolute path) for
    the block, waiting for it as long as another process holds it."""
    server = _server()
    if server is not None:
        Path(lock_file).parent.mkdir(parents=True, exist_ok=True)  # as flock makes it: the store's folder, say
        with _lease(server, f"glimpse-lock:{os.path.abspath(lock_file)}", blocking=True, close=False):
            yield
        return
    with _flock(Path(lock_file), blocking=True):
        yield


def creation_lock(store_path: str | Path) -> AbstractContextManager[None]:
    """Serialize creating (or checking) a store, so two runs started together agree on one store."""
    return store_lock(claims_dir(store_path) / CREATE_LOCK)


# ---------------------------------------------------------------------------------------------- flock


@contextmanager
def _flock(path: Path, blocking: bool) -> Iterator[int | None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            unsupported = flock_where_supported(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        if unsupported:
            raise ClaimsUnsupported(
                f"{path.parent}: this file system does not support flock ({unsupported}), which claims need here; "
                "extract with --claims scheduler (claims held on the run's Dask scheduler)")
        yield fd
    finally:
        os.close(fd)  # closing drops the lock


def flock_where_supported(fd: int, operation: int) -> str | None:
    """``fcntl.flock(fd, operation)``; where the file system has no flock (:data:`FLOCK_UNSUPPORTED`) nothing is
    locked and the reason is returned, else None. Any other error is raised (BlockingIOError: another holds it)."""
    try:
        fcntl.flock(fd, operation)
    except OSError as err:
        if err.errno not in FLOCK_UNSUPPORTED:
            raise
        return os.strerror(err.errno)
    return None


# ---------------------------------------------------------------------------------------------- Dask scheduler

#: Tries of a claim whose semaphore its holder closed between this process registering it and asking for the lease.
_TRIES = 5


def _lease_name(kind: str, store_path: str | Path, key: str) -> str:
    return f"glimpse-{kind}:{os.path.abspath(store_path)}:{key}"


@contextmanager
def _lease(server: Any, name: str, blocking: bool, close: bool) -> Iterator[bool]:
    """The one lease of the semaphore ``name`` on ``server``'s scheduler: yields whether it was granted (``blocking``:
    waits until it is). ``close``: the holder closes the semaphore after releasing it, unless another lease was
    granted meanwhile (the scheduler then keeps nothing of it)."""
    semaphore, held = _acquire(server, name, blocking)
    try:
        yield held
    finally:
        try:
            if held:
                semaphore.release()
                if close and semaphore.get_value() == 0:
                    semaphore.sync(server.scheduler.semaphore_close, name=name)
        finally:
            _stop_refreshing(semaphore)


def _acquire(server: Any, name: str, blocking: bool) -> tuple[Any, bool]:
    """A Semaphore of one lease named ``name`` on ``server``'s scheduler, and whether its lease was granted."""
    from distributed import Semaphore

    tries = 1
    while True:
        semaphore = Semaphore(max_leases=1, name=name, scheduler_rpc=server.scheduler, loop=server.loop)
        try:
            return semaphore, cast(bool, semaphore.acquire(timeout=None if blocking else 0))
        except RuntimeError as err:  # "Semaphore or Lock ... not known": its holder closed it after we registered it
            _stop_refreshing(semaphore)
            if "not known" not in str(err) or tries == _TRIES:
                raise
            tries += 1


def _stop_refreshing(semaphore: Any) -> None:
    callback = getattr(semaphore, "refresh_callback", None)  # absent with lease-timeout "inf"
    if callback is not None:
        callback.stop()
