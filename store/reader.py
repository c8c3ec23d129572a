"""Read-only access to a store: what training and evaluation use.

    from glimpse.store import open_store
    s = open_store("stores/ucf11")
    s.videos                  # list[VideoEntry], every video of the dataset with its status
    s.read(video_id, "rgb")   # (frames, channels, K, K) float16
    s.stream(video_id, "rgb").read(10, 40)   # many reads of one video: opened once, chunks read directly
    s.metadata                # StoreMeta: dataset, classes, multi_label, streams, config, ...
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
from zarr.errors import GroupNotFoundError

from glimpse.errors import GlimpseError
from glimpse.store.layout import ROOT_ATTR, VIDEO_ATTR, VIDEOS_GROUP
from glimpse.store.schema import (
    DONE,
    PENDING,
    SCHEMA_VERSION,
    STREAMS,
    UNREADABLE,
    ManifestRow,
    SchemaError,
    StoreMeta,
    StreamInfo,
    VideoEntry,
    VideoResult,
)


class StoreError(GlimpseError, RuntimeError):
    """A path that is no store, a store of another schema, or a read of something not there."""


#: Older schema versions that ``python -m glimpse.store upgrade`` brings to SCHEMA_VERSION.
UPGRADABLE = (1,)


def _open_root(path: str | Path, mode: str = "r", storage_options: Mapping[str, Any] | None = None,
               any_version: bool = False) -> zarr.Group:
    """The root group of the glimpse store at ``path``; a StoreError naming the path when it is none (or, unless
    ``any_version``, one of another schema version)."""
    location = str(path)
    if "://" not in location and not Path(location).exists():
        raise StoreError(f"{location}: no such store (the path does not exist)")
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


def read_meta(root: zarr.Group, location: str) -> StoreMeta:
    """The typed root metadata of an opened store; a StoreError naming the store when it breaks the schema."""
    return read_meta_dict(root.attrs[ROOT_ATTR], location)


def read_meta_dict(meta: Mapping[str, Any], location: str) -> StoreMeta:
    """:func:`read_meta` of root metadata already read as a dict."""
    try:
        return StoreMeta.from_dict(meta)
    except (SchemaError, TypeError, KeyError, ValueError) as exc:
        raise StoreError(f"{location}: root metadata ({ROOT_ATTR!r} attribute) breaks the schema: {exc}") from None


class Store:
    """A read-only view of one store. Never writes; works on read-only mounts."""

    def __init__(self, path: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        self.path = str(path)
        self._root = _open_root(path, "r", storage_options)
        self.metadata: StoreMeta = read_meta(self._root, self.path)

    def __repr__(self) -> str:
        return f"Store({self.path!r}, dataset={self.dataset!r}, videos={len(self.manifest)})"

    @property
    def root(self) -> zarr.Group:
        """The store's root Zarr group, opened read-only (for tools that check the raw arrays)."""
        return self._root

    @property
    def meta(self) -> dict[str, Any]:
        """The root metadata as plain JSON (for printing and scripts; code reads :attr:`metadata`)."""
        return self.metadata.to_dict()

    @property
    def config(self) -> dict[str, Any]:
        """The full extraction config the store was made with."""
        return dict(self.metadata.config)

    @property
    def config_hash(self) -> str:
        return self.metadata.config_hash

    @property
    def dataset(self) -> str:
        return self.metadata.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        return self.metadata.classes

    @property
    def multi_label(self) -> bool:
        """Whether a video may have several classes (as the dataset adapter declared it at extraction)."""
        return self.metadata.multi_label

    @property
    def streams(self) -> dict[str, dict[str, Any]]:
        """Stream name -> description as plain JSON (dims, frame_shape, backbone / flow method)."""
        return {name: info.to_dict() for name, info in self.metadata.streams.items()}

    @property
    def stream_info(self) -> dict[str, StreamInfo]:
        """Stream name -> its typed description."""
        return dict(self.metadata.streams)

    @property
    def manifest(self) -> tuple[ManifestRow, ...]:
        return self.metadata.videos

    def _node(self, row: ManifestRow) -> tuple[zarr.Group | None, VideoResult | None]:
        """A video's group and result: (None, None) while nothing is written, and an "unreadable" result when its
        metadata is broken."""
        node_path = f"{VIDEOS_GROUP}/{row.key}"
        try:
            node = self._root[node_path]
            attrs = node.attrs.get(VIDEO_ATTR)
            return node, None if attrs is None else VideoResult.from_dict(attrs)
        except KeyError:
            return None, None
        except Exception as exc:  # one broken video never hides the others (nor crashes a trainer)
            reason = f"{self.path}/{node_path}/zarr.json: {type(exc).__name__}: {exc}"
            return None, VideoResult(status=UNREADABLE, error=reason)

    def _result(self, row: ManifestRow) -> VideoResult | None:
        return self._node(row)[1]

    @property
    def videos(self) -> list[VideoEntry]:
        """Every video of the dataset in manifest order, with its current status (read fresh each call)."""
        return [VideoEntry.of(row, self._result(row)) for row in self.manifest]

    @cached_property
    def _by_id(self) -> dict[str, ManifestRow]:
        return {row.id: row for row in self.manifest}

    def video(self, video_id: str) -> VideoEntry:
        """The entry of one video, read fresh."""
        row = self._row(video_id)
        return VideoEntry.of(row, self._result(row))

    def _row(self, video_id: str) -> ManifestRow:
        try:
            return self._by_id[video_id]
        except KeyError:
            raise StoreError(f"{self.path}: no video {video_id!r} in this store") from None

    def read(self, video_id: str, stream: str = "rgb", frames: slice | None = None) -> np.ndarray:
        """The stored array of one finished video: rgb / flow_cnn (frames, C, K, K), flow (frames, 2, H, W).

        ``frames`` reads only a slice of frames (only the chunks it touches are fetched).
        """
        if stream not in STREAMS:
            raise StoreError(f"unknown stream {stream!r}; streams are {sorted(STREAMS)}")
        if stream not in self.metadata.streams:
            have = sorted(self.metadata.streams)
            raise StoreError(f"{self.path}: stream {stream!r} was not extracted (this store has {have})")
        node, result = self._node(self._row(video_id))
        status = result.status if result is not None else PENDING
        if status != DONE:
            raise StoreError(f"{self.path}: video {video_id!r} is {status}, not done; nothing to read")
        return node[stream][frames if frames is not None else slice(None)]

    def stream(self, video_id: str, stream: str = "rgb") -> StoredStream:
        """One stream of one video opened for many reads of frame ranges (what training reads through).

        The array's metadata is read once here; the video's status is not checked (the caller selected
        done videos). Raises StoreError when the array is missing or is no array.
        """
        key = self._row(video_id).key
        where = f"{VIDEOS_GROUP}/{key}/{stream}"
        try:
            array = self._root[where]
        except KeyError:
            raise StoreError(f"{self.path}/{where}: array missing") from None
        if not isinstance(array, zarr.Array):
            raise StoreError(f"{self.path}/{where}: a group, not an array")
        local = Path(self.path) / where if "://" not in self.path else None
        return StoredStream(array, f"{self.path}/{where}", local)

    def stream_problems(self, video_id: str, stream: str, n_frames: int) -> list[str]:
        """Why one stream of a done video does not fit the store's metadata (empty when it does); no chunk is read.

        The array must exist and be float16 (frames, ...) with the per-frame shape the store declares and
        ``n_frames`` frames. Training checks every video it selects with this, before reading a batch.
        """
        where = f"{self.path}/{VIDEOS_GROUP}/{self._row(video_id).key}/{stream}"
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


#: Threads that decode the chunks of one read (chunk decoders release the GIL); 1 decodes in the calling thread.
READ_THREADS = min(4, os.cpu_count() or 1)
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own
_scratch = threading.local()  # per thread: compressed bytes of one chunk, and one decoded chunk for partial reads


def _decode_pool() -> ThreadPoolExecutor:
    """The process's chunk-decoding threads, started on first use."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="glimpse-read"))
    return _pool[1]


def _buffer(name: str, size: int) -> memoryview:
    """A reusable writable buffer of at least ``size`` bytes, this thread's own (its pages stay mapped)."""
    held = getattr(_scratch, name, None)
    if held is None or len(held) < size:
        held = bytearray(max(size, 2 * len(held or b"")))
        setattr(_scratch, name, held)
    return memoryview(held)[:size]


class StoredStream:
    """One stored (frames, ...) array opened for repeated reads of frame ranges.

    Zarr's own read path costs milliseconds per call (async machinery, selection planning), as much as
    decoding a clip. When the array is in a local directory, chunked along frames only, with plain
    bytes and at most one Zstd or Blosc compressor (every store glimpse writes), :meth:`read` reads
    the chunk files itself into a reused buffer and decodes whole chunks straight into the output
    (only a chunk the range cuts is decoded aside and copied), in ``threads`` threads (default: READ_THREADS for
    compressed chunks; uncompressed ones are read straight into the output, only the frames asked for, in the
    calling thread); any other layout
    (sharding, other codecs, remote stores) is read through zarr. Both follow the array's own metadata.
    """

    def __init__(self, array: zarr.Array, where: str, local: Path | None, threads: int | None = None) -> None:
        self.array, self.where = array, where
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        self._decoder, self._direct = None, None
        meta = array.metadata
        chunks = tuple(array.chunks)
        codecs = list(getattr(meta, "codecs", ()))
        plain = (local is not None and array.shards is None and len(self.shape) >= 1
                 and chunks[1:] == self.shape[1:] and codecs and isinstance(codecs[0], BytesCodec)
                 and (self.dtype.itemsize == 1 or str(getattr(codecs[0].endian, "value", "")) == "little"))
        if plain and len(codecs) == 1:
            self._direct = local
        elif plain and len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
            self._direct, self._decoder = local, Zstd()
        elif plain and len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
            self._direct, self._decoder = local, Blosc()
        # raw chunks are copied, not decoded: more threads only add hand-offs (0.9 against 1.6 ms a 3 MB clip)
        self.threads = (READ_THREADS if self._decoder is not None else 1) if threads is None else threads
        self._per = chunks[0] if chunks else 1
        self._frame = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize  # bytes per frame
        self._fill = meta.fill_value
        self._key = meta.chunk_key_encoding.encode_chunk_key if self._direct is not None else None

    @property
    def direct(self) -> bool:
        """Whether reads bypass zarr (local chunk files decoded here)."""
        return self._direct is not None

    def clip(self, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
        """The frame range lo..hi clipped to the array (what :meth:`read` returns; hi None: the last frame)."""
        hi = self.shape[0] if hi is None else min(hi, self.shape[0])
        return max(0, min(lo, hi)), hi

    def read(self, lo: int = 0, hi: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """(hi - lo, ...) the frames lo..hi-1 (clipped to the array), decoding only the chunks they touch.

        ``out``, a C-contiguous array of that shape and dtype, receives the frames instead of a new array.
        """
        lo, hi = self.clip(lo, hi)
        if out is None:
            out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        elif out.shape != (hi - lo, *self.shape[1:]) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"{self.where}: out is {out.dtype} {out.shape}, frames {lo}..{hi} need a C-contiguous "
                             f"{self.dtype} {(hi - lo, *self.shape[1:])}")
        if self._direct is None:
            out[...] = self.array[lo:hi]
            return out
        if hi == lo:
            return out
        flat = out.reshape(hi - lo, -1).view(np.uint8)  # (frames, bytes per frame)
        parts = [(c, max(lo, c * self._per), min(hi, (c + 1) * self._per))
                 for c in range(lo // self._per, (hi + self._per - 1) // self._per)]
        if self.threads > 1 and len(parts) > 1:
            list(_decode_pool().map(lambda p: self._chunk(*p, flat[p[1] - lo : p[2] - lo]), parts))
        else:
            for c, a, b in parts:
                self._chunk(c, a, b, flat[a - lo : b - lo])
        return out

    def _chunk(self, c: int, a: int, b: int, into: np.ndarray) -> None:
        """Frames a..b-1 (all in chunk ``c``) into ``into`` (b - a, bytes per frame) uint8.

        An uncompressed chunk is read straight into ``into``, only the bytes of frames a..b-1; a compressed
        one is read whole and decoded into ``into`` when the range covers it, else into a scratch chunk.
        """
        zeros = (0,) * (len(self.shape) - 1)
        whole = a == c * self._per and b == (c + 1) * self._per  # the range covers the chunk: decode in place
        try:
            with open(self._direct / self._key((c, *zeros)), "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if self._decoder is None:  # raw bytes: frame f of the chunk starts at f * bytes per frame
                    if size != self._per * self._frame:
                        raise StoreError(f"{self.where}: chunk {c} holds {size} bytes, an uncompressed chunk has "
                                         f"{self._per * self._frame}")
                    f.seek((a - c * self._per) * self._frame)
                    self._fill_from(f, into.reshape(-1).data, c)
                    return
                raw = _buffer("raw", size)
                self._fill_from(f, raw, c)
        except FileNotFoundError:  # a chunk never written holds the fill value
            into.view(self.dtype)[...] = self._fill
            return
        target = into.reshape(-1) if whole else np.frombuffer(_buffer("chunk", self._per * self._frame), np.uint8)
        self._decoder.decode(raw, out=target)
        if not whole:
            into[...] = target.reshape(self._per, self._frame)[a - c * self._per : b - c * self._per]

    def _fill_from(self, f, buffer: memoryview, c: int) -> None:
        """Read exactly len(buffer) bytes of chunk ``c``'s open file ``f`` into ``buffer``."""
        got = 0
        while got < len(buffer):
            step = f.readinto(buffer[got:])
            if not step:
                raise StoreError(f"{self.where}: chunk {c} ended after {got} of {len(buffer)} bytes to read")
            got += step


def open_store(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Open a store read-only (a local path or an fsspec URL such as ``file:///...`` or ``s3://...``)."""
    return Store(path, storage_options)
