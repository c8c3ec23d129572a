"""The direct chunk reader: one stored (frames, ...) array read frame range by frame range without zarr's read path.

    s.stream(video_id, "rgb").read(10, 40)   # (30, C, K, K): the chunks of frames 10..39, decoded here

What :meth:`glimpse.store.reader.Store.stream` returns and :meth:`~glimpse.store.reader.Store.read` reads through.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

from glimpse.store.schema import StoreError
from glimpse.store.video_files import data_offset, entry_spans


def read_frames(stream: StoredStream, frames: slice | Sequence[int] | np.ndarray | None, what: str) -> np.ndarray:
    """(len(frames), ...) the ``frames`` of ``stream`` as numpy indexes them: a slice of step 1 is one read, other
    slices and lists read the frames from the first to the last asked for and take theirs."""
    n = stream.shape[0]
    if frames is None:
        return stream.read()
    if isinstance(frames, slice):
        lo, hi, step = frames.indices(n)
        if step == 1:
            return stream.read(lo, max(lo, hi))
        picks = np.arange(lo, hi, step)
    else:
        picks = np.asarray(frames)
        if picks.dtype.kind not in "iu" and picks.size:
            raise StoreError(f"{what}: frames must be a slice or whole numbers, not {picks.dtype}")
        picks = picks.astype(np.int64).reshape(-1)
        if picks.size and (picks.min() < -n or picks.max() >= n):
            bad = picks[(picks < -n) | (picks >= n)]
            raise StoreError(f"{what}: frames {bad.tolist()[:5]} out of range, it has {n} frames")
        picks = np.where(picks < 0, picks + n, picks)
    if not picks.size:
        return np.empty((0, *stream.shape[1:]), stream.dtype)
    lo = int(picks.min())
    return stream.read(lo, int(picks.max()) + 1)[picks - lo]


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
    decoding a clip. When the array is in a local video file (``local``, a zip of uncompressed entries, its
    entries named ``prefix`` + chunk key: store.video_files), chunked along frames only, with plain
    bytes and at most one Zstd or Blosc compressor (every store glimpse writes), :meth:`read` reads the chunks'
    bytes itself, at their offsets in the file, into a reused buffer and decodes whole chunks straight into the output
    (only a chunk the range cuts is decoded aside and copied), in ``threads`` threads (default: READ_THREADS for
    compressed chunks; uncompressed ones are read straight into the output, only the frames asked for, in the
    calling thread); any other layout
    (sharding, other codecs, remote stores) is read through zarr. Both follow the array's own metadata.
    """

    def __init__(self, array: zarr.Array, where: str, local: Path | None, threads: int | None = None,
                 prefix: str = "") -> None:
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
        # chunk key -> (offset of its zip entry's header, bytes); where its bytes start, found on first read
        self._spans = entry_spans(self._direct, prefix) if self._direct is not None else {}
        self._starts: dict[str, int] = {}

    @property
    def direct(self) -> bool:
        """Whether reads bypass zarr (a local video file's chunks read and decoded here)."""
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
        key = self._key((c, *zeros))
        if key not in self._spans:  # a chunk never written holds the fill value
            into.view(self.dtype)[...] = self._fill
            return
        header, size = self._spans[key]
        with open(self._direct, "rb", buffering=0) as f:
            start = self._starts.get(key)
            if start is None:
                start = self._starts[key] = data_offset(f, header)
            if self._decoder is None:  # raw bytes: frame f of the chunk starts at f * bytes per frame
                if size != self._per * self._frame:
                    raise StoreError(f"{self.where}: chunk {c} holds {size} bytes, an uncompressed chunk has "
                                     f"{self._per * self._frame}")
                f.seek(start + (a - c * self._per) * self._frame)
                self._fill_from(f, into.reshape(-1).data, c)
                return
            raw = _buffer("raw", size)
            f.seek(start)
            self._fill_from(f, raw, c)
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
