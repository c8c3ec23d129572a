"""Read-only access to a store: what training and evaluation use.

    from glimpse.store import open_store
    s = open_store("stores/ucf11")
    s.videos                  # list[VideoEntry], every video of the dataset with its status
    s.read(video_id, "rgb")   # (frames, channels, K, K) float16
    s.stream(video_id, "rgb").read(10, 40)   # many reads of one video: opened once, chunks read directly
    s.metadata                # StoreMeta: dataset, classes, multi_label, streams, config, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import GroupNotFoundError

from glimpse.store.chunks import StoredStream, read_frames
from glimpse.store.index import INDEX_STATUSES, IndexState, read_index
from glimpse.store.layout import ROOT_ATTR, VIDEO_ATTR, VIDEOS_GROUP
from glimpse.store.manifest import MANIFEST_GROUP, ManifestColumns, paused_gc, read_columns, read_keys, with_dicts
from glimpse.store.schema import (
    DONE,
    PENDING,
    SCHEMA_VERSION,
    STREAMS,
    UNREADABLE,
    WRITING,
    ManifestRow,
    SchemaError,
    StoreError,
    StoreMeta,
    StreamInfo,
    VideoEntry,
    VideoResult,
)
from glimpse.store.video_files import close_video, open_video, read_video_attrs, refuse_old_layout, video_path

#: Older schema versions that ``python -m glimpse.store upgrade`` brings to SCHEMA_VERSION.
UPGRADABLE = (1, 2)


def _open_root(path: str | Path, mode: str = "r", storage_options: Mapping[str, Any] | None = None,
               any_version: bool = False) -> zarr.Group:
    """The root group of the glimpse store at ``path``; a StoreError naming the path when it is none (or, unless
    ``any_version``, one of another schema version)."""
    location = str(path)
    if "://" not in location and not Path(location).exists():
        raise StoreError(f"{location}: no such store (the path does not exist)")
    with _backend_errors(location):
        try:
            root = zarr.open_group(location, mode=mode, zarr_format=3, storage_options=storage_options)
        except (GroupNotFoundError, FileNotFoundError, ValueError) as exc:  # ValueError: bad JSON, bad UTF-8
            raise StoreError(f"{location}: not a glimpse store (no Zarr v3 group here: {exc})") from exc
    meta = root.attrs.get(ROOT_ATTR)
    if not isinstance(meta, dict):
        raise StoreError(f"{location}: a Zarr group, but not a glimpse store (no '{ROOT_ATTR}' attribute)")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION and not any_version:
        upgrade = f"upgrade it with 'python -m glimpse.store upgrade {location}', " if version in UPGRADABLE else ""
        raise StoreError(
            f"{location}: store schema version {version}, this glimpse reads version {SCHEMA_VERSION}; "
            f"{upgrade}re-extract it, or use the glimpse release that wrote it"
        )
    return root


def _backend_errors(location: str) -> AbstractContextManager[None]:
    """For a URL, its backend's failures (not installed, endpoint unreachable, credentials) as one-line StoreErrors
    (store.remote); nothing for a local path."""
    if "://" not in location:
        return nullcontext()
    from glimpse.store.remote import check_backend, remote_errors

    check_backend(location)
    return remote_errors(location)


def read_meta(root: zarr.Group, location: str) -> StoreMeta:
    """The typed root metadata of an opened store; a StoreError naming the store when it breaks the schema."""
    return read_meta_dict(root.attrs[ROOT_ATTR], location)


def read_meta_dict(meta: Mapping[str, Any], location: str) -> StoreMeta:
    """:func:`read_meta` of root metadata already read as a dict."""
    try:
        return StoreMeta.from_dict(meta)
    except (SchemaError, TypeError, KeyError, ValueError) as exc:
        raise StoreError(f"{location}: root metadata ({ROOT_ATTR!r} attribute) breaks the schema: {exc}") from None


def read_result(store_path: str | Path, key: str) -> VideoResult | None:
    """The result of video ``key`` of a local store as its attributes say (None: nothing written yet), read from the
    first entry of its file (store.video_files). Raises on broken metadata."""
    try:
        found = read_video_attrs(store_path, key)
    except FileNotFoundError:
        return None
    return None if found is None else VideoResult.from_dict(found)


class _Lazy:
    """A result field of an :class:`IndexedEntry`, read with the rest of the video's result on first use."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, entry: Any, owner: type | None = None) -> Any:
        if entry is None:
            return self
        attrs = entry.__dict__
        pending = attrs["status"] == PENDING  # nothing written to read: a pending video's values
        found = (None if pending else attrs["_store"]._result(entry.row)) or VideoResult()
        for name in _LAZY:
            attrs.setdefault(name, getattr(found, name))
        return attrs[self.name]


#: The result fields an index entry reads on first use: every field but what the index holds.
_LAZY = tuple(f.name for f in fields(VideoResult) if f.name not in ("status", "error", "n_frames"))


class IndexedEntry(VideoEntry):
    """A :class:`VideoEntry` whose status, error and frame count come from the store's index; the rest of its result
    (frame indices, timestamps, boxes, checksums, ...) is read from the video's attributes on first use.

    Made by :attr:`Store.videos` a whole column at a time: its ``__dict__`` holds the row's fields, status, frame
    count and store, and ``error`` only where the index has one (the field's default, None, otherwise).
    """

    locals().update({name: _Lazy() for name in _LAZY})  # one lazy attribute per field of _LAZY

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VideoEntry):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = VideoEntry.__hash__

    def __reduce__(self) -> tuple[Any, ...]:  # sent to another process as a plain entry, every field read
        return VideoEntry.of, (self.row, self.result)


class Store:
    """A read-only view of one store. Never writes; works on read-only mounts.

    Opening reads the root attributes only; the manifest (:attr:`manifest`) is read on first use, and statuses come
    from the index (:meth:`index`), so opening, listing and counting cost the same at any dataset size.
    """

    def __init__(self, path: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        self.path = str(path)
        self._root = _open_root(path, "r", storage_options)
        self._head: StoreMeta = read_meta(self._root, self.path)  # without the manifest
        self.storage_options = dict(storage_options or {})
        self._local = Path(self.path) if "://" not in self.path else None
        refuse_old_layout(self.path)
        self._opened: dict[tuple[str, str], tuple[VideoResult, StoredStream]] = {}  # (key, stream): what read opened

    @cached_property
    def metadata(self) -> StoreMeta:
        """The typed root metadata with the manifest (read on first use)."""
        return replace(self._head, videos=self.manifest)

    @cached_property
    def manifest(self) -> tuple[ManifestRow, ...]:
        """Every video's manifest row, in order (the ``manifest/`` group, read once)."""
        return self._columns.rows()

    @cached_property
    def _columns(self) -> ManifestColumns:
        """The ``manifest/`` group as read, once: what :attr:`manifest` and every :attr:`videos` are built from."""
        with _backend_errors(self.path):
            return read_columns(self._root)

    @cached_property
    def video_count(self) -> int:
        """How many videos the manifest holds (its group's attributes only)."""
        with _backend_errors(self.path):
            return int(self._root[MANIFEST_GROUP].attrs["videos"])

    def index(self) -> IndexState:
        """Every video's status, frame count and bytes on disk as the index says, in manifest order (read fresh)."""
        def positions(wanted: set[str]) -> dict[str, int]:  # the logs' keys only: a dict of all is 3x slower
            keys = self._columns.keys if "_columns" in self.__dict__ else read_keys(self._root)
            return {key: at for at, key in enumerate(keys) if key in wanted}

        with _backend_errors(self.path):
            try:
                return read_index(self.path, positions, self.video_count, self.storage_options)
            except (ValueError, KeyError, OSError) as exc:
                raise StoreError(f"{self.path}/index: unreadable ({type(exc).__name__}: {exc}); rebuild it with "
                                 f"'python -m glimpse.store reindex {self.path}'") from exc

    def __repr__(self) -> str:
        return f"Store({self.path!r}, dataset={self.dataset!r}, videos={self.video_count})"

    @property
    def root(self) -> zarr.Group:
        """The store's root Zarr group, opened read-only (for tools that check the raw arrays)."""
        return self._root

    @property
    def meta(self) -> dict[str, Any]:
        """The root metadata as plain JSON (for printing and scripts; code reads :attr:`metadata`)."""
        return self.metadata.to_dict()

    @property
    def head(self) -> StoreMeta:
        """The typed root metadata without the manifest (``videos`` empty): read at open, costs nothing more."""
        return self._head

    @property
    def config(self) -> dict[str, Any]:
        """The full extraction config the store was made with."""
        return dict(self._head.config)

    @property
    def config_hash(self) -> str:
        return self._head.config_hash

    @property
    def dataset(self) -> str:
        return self._head.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        return self._head.classes

    @property
    def multi_label(self) -> bool:
        """Whether a video may have several classes (as the dataset adapter declared it at extraction)."""
        return self._head.multi_label

    @property
    def streams(self) -> dict[str, dict[str, Any]]:
        """Stream name -> description as plain JSON (dims, frame_shape, backbone / flow method)."""
        return {name: info.to_dict() for name, info in self._head.streams.items()}

    @property
    def stream_info(self) -> dict[str, StreamInfo]:
        """Stream name -> its typed description."""
        return dict(self._head.streams)

    def _result(self, row: ManifestRow) -> VideoResult | None:
        """A video's result: None while nothing is written, an "unreadable" result when its metadata is broken.

        Read from the first bytes of the video's file (store.video_files): one read, one ranged request on an
        object store.
        """
        try:
            try:
                attrs = read_video_attrs(self.path, row.key, self.storage_options)
            except FileNotFoundError:
                return self._old_layout_result(row)
            return None if attrs is None else VideoResult.from_dict(attrs)
        except Exception as exc:  # one broken video never hides the others (nor crashes a trainer)
            reason = f"{video_path(self.path, row.key)}/zarr.json: {type(exc).__name__}: {exc}"
            return VideoResult(status=UNREADABLE, error=reason)

    def _old_layout_result(self, row: ManifestRow) -> VideoResult | None:
        """None for a video not written yet; an "unreadable" result naming the upgrade for a video kept in the old
        one-folder-per-video layout (a remote store's, which :func:`refuse_old_layout` cannot see at open)."""
        if self._local is not None:
            return None  # a local store of the old layout was refused at open
        try:
            old = self._root[f"{VIDEOS_GROUP}/{row.key}"]
        except KeyError:
            return None
        if VIDEO_ATTR not in old.attrs:
            return None
        return VideoResult(status=UNREADABLE, error=f"{self.path}: videos stored one folder per video (an older "
                                                    "glimpse's layout); convert it with 'python -m glimpse.store "
                                                    "upgrade' on a local copy")

    @property
    def videos(self) -> list[VideoEntry]:
        """Every video of the dataset in manifest order, with its current status (the index, read fresh each call).

        Entries are :class:`IndexedEntry`: the rest of a result is read from the video's attributes on first use. A
        video the index has "writing" (a live writer, or one killed before its log line) is read from its attributes.
        """
        return self.videos_and_index()[0]

    def videos_and_index(self) -> tuple[list[VideoEntry], IndexState]:
        """:attr:`videos` and the index state they were made from, for a caller that also needs the state."""
        _ = self._columns  # read before the index, whose log lines are placed by the manifest's keys
        state = self.index()
        with paused_gc():
            return self._entries(state), state

    def _entries(self, state: IndexState) -> list[VideoEntry]:
        cols = self._columns
        status = list(map(INDEX_STATUSES.__getitem__, state.status.tolist()))
        attrs = [{"id": i, "key": k, "path": p, "labels": lab, "splits": sp, "group": g, "fingerprint": f,
                  "status": st, "n_frames": n, "_store": self}
                 for i, k, p, lab, sp, g, f, st, n in zip(cols.ids, cols.keys, cols.paths, cols.labels, cols.splits(),
                                                          cols.groups, cols.fingerprints, status,
                                                          state.n_frames.tolist(), strict=True)]
        # ten keys: a dict's smallest table for them (eleven, with error, double it and take 2.5x the time)
        out: list[VideoEntry] = with_dicts(IndexedEntry, attrs)
        for at, error in state.errors.items():
            attrs[at]["error"] = error
        for at in np.flatnonzero(state.status == INDEX_STATUSES.index(WRITING)).tolist():
            row = cols.row(at)  # a live writer's, or one killed before its log line: its attributes say
            out[at] = VideoEntry.of(row, self._result(row))
        return out

    @cached_property
    def _positions(self) -> dict[str, int]:
        ids = self._columns.ids
        return dict(zip(ids, range(len(ids)), strict=True))

    def video(self, video_id: str) -> VideoEntry:
        """The entry of one video, read fresh."""
        row = self._row(video_id)
        return VideoEntry.of(row, self._result(row))

    def _row(self, video_id: str) -> ManifestRow:
        at = self._positions.get(video_id)
        if at is None:
            raise StoreError(f"{self.path}: no video {video_id!r} in this store")
        return self._columns.row(at)

    def read(self, video_id: str, stream: str = "rgb", frames: slice | Sequence[int] | None = None) -> np.ndarray:
        """The stored array of one finished video: rgb / flow_cnn (frames, C, K, K), flow (frames, 2, H, W).

        ``frames``, a slice or a list of frame indices (numpy's meaning), reads only those frames: the chunks from
        the first to the last are read, through the direct chunk reader of :meth:`stream` wherever it serves.
        The video's status is read fresh each call; its opened stream is kept while that result stays the same.
        """
        if stream not in STREAMS:
            raise StoreError(f"unknown stream {stream!r}; streams are {sorted(STREAMS)}")
        if stream not in self._head.streams:
            have = sorted(self._head.streams)
            raise StoreError(f"{self.path}: stream {stream!r} was not extracted (this store has {have})")
        row = self._row(video_id)
        with _backend_errors(self.path):
            result = self._result(row)
            status = result.status if result is not None else PENDING
            if result is None or status != DONE:
                raise StoreError(f"{self.path}: video {video_id!r} is {status}, not done; nothing to read")
            seen, opened = self._opened.get((row.key, stream), (None, None))
            if opened is None or seen != result:  # a video written again has another result: opened again
                opened = self.stream(video_id, stream)
                self._opened[(row.key, stream)] = (result, opened)
            return read_frames(opened, frames, f"{self.path}: video {video_id!r}")

    def stream(self, video_id: str, stream: str = "rgb") -> StoredStream:
        """One stream of one video opened for many reads of frame ranges (what training reads through).

        The array's metadata is read once here; the video's status is not checked (the caller selected
        done videos). Raises StoreError when the video's file or the array is missing or is no array.
        """
        key = self._row(video_id).key
        where = f"{video_path(self.path, key)}/{stream}"
        try:
            group = open_video(self.path, key, self.storage_options)
        except FileNotFoundError:
            raise StoreError(f"{video_path(self.path, key)}: video file missing") from None
        try:
            array = group[stream]
        except KeyError:
            raise StoreError(f"{where}: array missing") from None
        finally:
            close_video(group)  # the direct reader reads the file itself; zarr reopens it if it reads
        if not isinstance(array, zarr.Array):
            raise StoreError(f"{where}: a group, not an array")
        local = Path(video_path(self.path, key)) if self._local is not None else None
        return StoredStream(array, where, local, prefix=f"{stream}/")

    def stream_problems(self, video_id: str, stream: str, n_frames: int) -> list[str]:
        """Why one stream of a done video does not fit the store's metadata (empty when it does); no chunk is read.

        The array must exist and be float16 (frames, ...) with the per-frame shape the store declares and
        ``n_frames`` frames. Training checks every video it selects with this, before reading a batch.
        """
        where = f"{video_path(self.path, self._row(video_id).key)}/{stream}"
        try:
            array = self.stream(video_id, stream)
        except StoreError as err:
            return [str(err)]
        except Exception as exc:
            return [f"{where}: array metadata unreadable ({type(exc).__name__}: {exc})"]
        problems = []
        if array.dtype != np.float16:
            problems.append(f"{where}: dtype {array.dtype}, expected float16")
        if len(array.shape) != 4:
            problems.append(f"{where}: shape {array.shape} has {len(array.shape)} dimensions, expected 4")
        declared = self.streams.get(stream, {}).get("frame_shape")
        if declared is not None and tuple(array.shape[1:]) != tuple(declared):
            problems.append(f"{where}: per-frame shape {tuple(array.shape[1:])} but the store declares "
                            f"{tuple(declared)}")
        stored = array.shape[0] if array.shape else 0
        if stored != n_frames:
            problems.append(f"{where}: {stored} frames stored but n_frames is {n_frames}")
        return problems


def open_store(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Open a store read-only (a local path or an fsspec URL such as ``file:///...`` or ``s3://...``)."""
    return Store(path, storage_options)
