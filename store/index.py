"""The video index (schema 3): every video's status, frames and bytes, read in a few requests at any dataset size.

    STORE/index/snapshot.npz               status (videos,) int8 (INDEX_STATUSES), n_frames (videos,) int32,
                                           bytes (videos,) int64, device (videos,) int16 (a code into "about"'s
                                           "devices", 0: unrecorded), in manifest order; "about": JSON with the
                                           error of each failed video, the device labels, and how far into each
                                           log the snapshot has read
    STORE/index/<host>-<pid>-<hex>.jsonl   one writer process's append-only log: a line per status change
                                           {"key", "status", "n_frames", "bytes", "error", "device", "t"}

Writers append to their own log (no global lock: one ``write`` of one line each); readers read the snapshot, then every
log from where the snapshot stopped, and apply the lines in time order. :func:`compact` folds the logs into a new
snapshot (``store gc`` and the end of every extraction run it) and deletes the logs of writers that are gone (a live
writer holds an ``flock`` on its log; on a file system without flock no log is known gone, and all are kept).
Compactions take turns through :func:`glimpse.store.claims.store_lock` (flock, or the run's Dask scheduler). The
per-video attributes stay the source of truth: a writer logs "writing" before it touches a video and "done" after the
video's attributes say so, so a video the index calls done is done; one left "writing" by a killed writer is read
from its attributes (:func:`resolve_writing`); ``store verify`` checks the index against the attributes and
``store reindex`` (:func:`rebuild`) makes it again from them.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.files import atomic_writer
from glimpse.store.claims import flock_where_supported, store_lock
from glimpse.store.schema import DONE, FAILED, PENDING, WRITING
from glimpse.store.video_files import video_bytes as file_bytes

INDEX_DIR = "index"
SNAPSHOT = "snapshot.npz"
LOG_SUFFIX = ".jsonl"
COMPACT_LOCK = "compact.lock"
#: A status's code in the snapshot's ``status`` array.
INDEX_STATUSES = (PENDING, WRITING, DONE, FAILED)
_CODE = {s: np.int8(i) for i, s in enumerate(INDEX_STATUSES)}


def video_bytes(store_path: str | Path, key: str) -> int:
    """Bytes on disk of one video of a local store (its file; 0 when it has none)."""
    return file_bytes(store_path, key) or 0


@dataclass
class IndexState:
    """The index as read: arrays in manifest order, the errors of failed videos by position."""

    status: np.ndarray  # (videos,) int8 codes of INDEX_STATUSES
    n_frames: np.ndarray  # (videos,) int32
    nbytes: np.ndarray  # (videos,) int64
    device: np.ndarray  # (videos,) int16 codes into ``devices``
    errors: dict[int, str] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)  # log name -> bytes of it the state holds
    devices: list[str] = field(default_factory=lambda: [""])  # code -> device label ("": unrecorded)

    @classmethod
    def empty(cls, n: int) -> IndexState:
        return cls(np.zeros(n, np.int8), np.zeros(n, np.int32), np.zeros(n, np.int64), np.zeros(n, np.int16))

    def device_counts(self, status: str = DONE) -> dict[str, int]:
        """How many videos of ``status`` each device computed ("unrecorded" for videos that do not say)."""
        codes, counts = np.unique(self.device[self.status == _CODE[status]], return_counts=True)
        return {self.devices[c] or "unrecorded": int(n) for c, n in zip(codes.tolist(), counts.tolist(), strict=True)}

    def statuses(self) -> list[str]:
        """The status of every video, in manifest order."""
        return [INDEX_STATUSES[c] for c in self.status.tolist()]

    def set(self, at: int, status: str, n_frames: int = 0, nbytes: int = 0, error: str | None = None,
            device: str | None = None) -> None:
        self.status[at], self.n_frames[at], self.nbytes[at] = _CODE[status], n_frames, nbytes
        if device and device not in self.devices:
            self.devices.append(device)
        self.device[at] = self.devices.index(device) if device else 0
        if status == FAILED:
            self.errors[at] = error or ""
        else:
            self.errors.pop(at, None)


class _Files:
    """The index folder of a local store or a URL, through fsspec for URLs."""

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None) -> None:
        self.location = location.rstrip("/")
        self.fs: Any = None
        if "://" in location:
            from glimpse.store.remote import url_fs

            self.fs, inner = url_fs(location, storage_options)
            self.base = inner.rstrip("/") + "/" + INDEX_DIR
        else:
            self.base = str(Path(location) / INDEX_DIR)

    def names(self) -> list[str]:
        """The log files' names (one LIST on an object store)."""
        try:
            if self.fs is None:
                return sorted(n for n in os.listdir(self.base) if n.endswith(LOG_SUFFIX))
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.base, detail=False) if p.endswith(LOG_SUFFIX))
        except FileNotFoundError:
            return []

    def read(self, name: str, start: int = 0) -> bytes | None:
        """The bytes of ``name`` from ``start`` on; None when it does not exist."""
        path = f"{self.base}/{name}"
        try:
            if self.fs is None:
                with open(path, "rb") as f:
                    f.seek(start)
                    return f.read()
            if start and start >= self.fs.size(path):  # an empty range is refused by S3 (416)
                return b""
            return self.fs.cat_file(path, start=start or None)
        except FileNotFoundError:
            return None

    def stamp(self) -> Any:
        """What changes when the snapshot is replaced."""
        path = f"{self.base}/{SNAPSHOT}"
        try:
            if self.fs is None:
                st = os.stat(path)
                return st.st_ino, st.st_mtime_ns, st.st_size
            info = self.fs.info(path)
            return info.get("ETag"), info.get("LastModified"), info.get("size")
        except FileNotFoundError:
            return None


def _load_snapshot(data: bytes | None, n: int) -> IndexState:
    if data is None:
        return IndexState.empty(n)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        about = json.loads(str(z["about"]))
        device = z["device"].copy() if "device" in z.files else np.zeros(len(z["status"]), np.int16)
        state = IndexState(z["status"].copy(), z["n_frames"].copy(), z["bytes"].copy(), device,
                           {int(k): v for k, v in about.get("errors", {}).items()}, dict(about.get("covered", {})),
                           list(about.get("devices", [""])))
    if len(state.status) != n:
        raise ValueError(f"index snapshot has {len(state.status)} videos, the manifest {n}")
    return state


def _lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of a log chunk and how many bytes they take (a half-written last line is left)."""
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()], end


def read_index(location: str, positions: Callable[[set[str]], dict[str, int]], n: int,
               storage_options: dict[str, Any] | None = None) -> IndexState:
    """The index of the store at ``location`` (a path or URL) with ``n`` videos; ``positions(keys)`` gives the place
    in the manifest of each of ``keys`` (called only when a log has lines, with their keys). A compaction racing the
    read is retried."""
    files = _Files(location, storage_options)
    for _attempt in range(10):
        stamp = files.stamp()
        state = _load_snapshot(files.read(SNAPSHOT), n)
        names = files.names()
        lines: list[dict[str, Any]] = []
        vanished = False
        for name in names:
            start = state.covered.get(name, 0)
            data = files.read(name, start)
            if data is None:
                vanished = True
                break
            got, used = _lines(data)
            lines += got
            state.covered[name] = start + used
        if vanished or files.stamp() != stamp:
            continue  # a compaction replaced the snapshot and removed logs under us: read again
        _apply(state, lines, positions)
        return state
    raise OSError(f"{location}/{INDEX_DIR}: the index kept changing while it was read")


def _apply(state: IndexState, lines: list[dict[str, Any]], positions: Callable[[set[str]], dict[str, int]]) -> None:
    if not lines:
        return
    where = positions({line["key"] for line in lines})
    for line in sorted(lines, key=lambda d: d["t"]):
        at = where.get(line["key"])
        if at is not None:
            state.set(at, line["status"], line.get("n_frames", 0), line.get("bytes", 0), line.get("error"),
                      line.get("device"))


def write_snapshot(store_path: str | Path, state: IndexState) -> None:
    """Replace the store's snapshot with ``state`` in one rename."""
    folder = Path(store_path) / INDEX_DIR
    folder.mkdir(exist_ok=True)
    about = json.dumps({"errors": {str(k): v for k, v in state.errors.items()}, "covered": state.covered,
                        "devices": state.devices})
    with atomic_writer(folder / SNAPSHOT) as f:  # readers see the old snapshot or the new one
        np.savez(f, status=state.status, n_frames=state.n_frames, bytes=state.nbytes, device=state.device,
                 about=np.array(about))


class IndexLog:
    """One writer process's append-only log of status changes, opened at its first line; its ``flock`` tells
    :func:`compact` that the writer is alive."""

    def __init__(self, store_path: str | Path) -> None:
        self.folder = Path(store_path) / INDEX_DIR
        self._fd: int | None = None
        self._pid = 0

    def append(self, key: str, status: str, n_frames: int = 0, nbytes: int = 0, error: str | None = None,
               device: str | None = None) -> None:
        """Add one line (one ``write`` of a file opened for appending: lines of two threads never interleave)."""
        if self._fd is None or self._pid != os.getpid():  # a forked child writes its own log
            self._open()
        line = {"key": key, "status": status, "n_frames": n_frames, "bytes": nbytes, "t": time.time()}
        if error is not None:
            line["error"] = error
        if device is not None:
            line["device"] = device
        assert self._fd is not None
        os.write(self._fd, (json.dumps(line) + "\n").encode())

    def _open(self) -> None:
        self.folder.mkdir(exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{LOG_SUFFIX}"
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
        # shared: compact's exclusive try fails while this process lives; without flock compact keeps every log
        flock_where_supported(fd, fcntl.LOCK_SH)
        self._fd, self._pid = fd, os.getpid()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        self.close()


def _writer_gone(path: Path) -> bool:
    """Whether no live process holds the log at ``path`` open for writing (never known without flock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        return flock_where_supported(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is None  # unsupported: never known gone
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def compact(store_path: str | Path, keys: Sequence[str],
            result_status: Callable[[str], tuple[str, int, str | None, str | None]] | None = None,
            rebuild_from: Callable[[], IndexState] | None = None) -> IndexState:
    """Fold every log of a local store into a new snapshot and delete the logs of writers that are gone.

    ``result_status(key)`` (status, n_frames, error, device from the video's attributes) settles the videos the
    logs leave "writing" (a writer killed between its file and its log line). ``rebuild_from()``, when given, replaces
    the snapshot and the logs' past lines with a state read from every video's attributes (``store reindex``): the
    logs' lengths are taken first, so a line a writer adds during the scan is applied on top of it.
    """
    store_path = Path(store_path)
    where = {k: i for i, k in enumerate(keys)}
    (store_path / INDEX_DIR).mkdir(exist_ok=True)
    with store_lock(store_path / INDEX_DIR / COMPACT_LOCK):
        files = _Files(str(store_path))
        if rebuild_from is not None:
            lengths = {name: (files.read(name) or b"").rfind(b"\n") + 1 for name in files.names()}
            state = rebuild_from()
            lines = []
            for name in files.names():
                start = lengths.get(name, 0)
                got, used = _lines(files.read(name, start) or b"")
                lines += got
                state.covered[name] = start + used
            _apply(state, lines, lambda _keys: where)
        else:
            state = read_index(str(store_path), lambda _keys: where, len(keys))
        if result_status is not None:
            for at in np.flatnonzero(state.status == _CODE[WRITING]):
                key: str = keys[int(at)]
                status, n_frames, error, device = result_status(key)
                if status in (DONE, FAILED, PENDING):
                    state.set(int(at), status, n_frames, video_bytes(store_path, key), error, device)
        gone = [name for name in state.covered if _writer_gone(Path(files.base) / name)]
        for name in gone:  # read to its end above, and no one appends to it any more
            state.covered.pop(name)
        write_snapshot(store_path, state)
        for name in gone:
            (Path(files.base) / name).unlink(missing_ok=True)
    return state
