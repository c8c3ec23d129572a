"""``--cache-dir``: the run's videos decompressed into one contiguous, memory-mapped file on a local disk.

The file holds every (video, stream) cube of the run as float16, one after the other. Its name is a
hash of what it holds: the store's config hash, the streams, and each video's key, frame count and
the checksums recorded when it was written, so a store re-extracted or a video rewritten gives another
file (the old one is left for whoever still uses it). It is written once, by the first run that needs
it, to a temporary file renamed into place when complete, so runs started together may share the
folder: each either finds the finished file or writes an identical one. Later reads come from the
page cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glimpse.files import atomic_writer
from glimpse.store import Store
from glimpse.train.clips import Video

log = logging.getLogger("train")


class DiskCache:
    """A finished cache file opened read-only: (video key, stream) -> (frames, C, K, K) float16 view."""

    def __init__(self, path: Path, layout: dict[tuple[str, str], tuple[int, tuple[int, ...]]]) -> None:
        self.path, self.layout = Path(path), layout
        self._map: np.memmap | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "layout": self.layout, "_map": None}

    def frames(self, key: str, stream: str) -> np.ndarray:
        """The whole cube of one video's stream (a view of the mapped file, copy-on-write)."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.float16, mode="c")
        offset, shape = self.layout[(key, stream)]
        return self._map[offset : offset + int(np.prod(shape))].reshape(shape)

    @staticmethod
    def name(store: Store, videos: Sequence[Video], streams: Sequence[str]) -> str:
        """The file name for these videos and streams of this store (changes whenever any of them does)."""
        entries = {e.id: e for e in store.videos}
        content = {"store": store.config_hash, "streams": list(streams),
                   "videos": [[v.key, v.n_frames, [entries[v.id].checksums.get(s) for s in streams]] for v in videos]}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]
        return f"{store.dataset}-{store.config_hash}-{digest}.f16"

    @classmethod
    def build(cls, store: Store, videos: Sequence[Video], streams: Sequence[str], folder: str | Path) -> DiskCache:
        """The cache of ``videos`` in ``folder``: found there, or written now (each cube read from the store once)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        layout, offset = {}, 0
        for v in videos:
            for s in streams:
                shape = (v.n_frames, *store.streams[s]["frame_shape"])
                layout[(v.key, s)] = (offset, shape)
                offset += int(np.prod(shape))
        path = folder / cls.name(store, videos, streams)
        if path.is_file() and path.stat().st_size == 2 * offset:
            log.info("cache: reading %s", path)
            return cls(path, layout)
        with atomic_writer(path) as f:  # complete or absent: a reader never sees half a file
            for v in videos:
                for s in streams:
                    cube = store.stream(v.id, s).read()  # (frames, C, K, K) float16
                    if cube.shape != layout[(v.key, s)][1]:
                        raise ValueError(f"{store.path}: video {v.id} stream {s} is {cube.shape}, expected "
                                         f"{layout[(v.key, s)][1]}")
                    f.write(np.ascontiguousarray(cube, dtype=np.float16).tobytes())
        log.info("cache: wrote %d videos (%.2f GB) to %s", len(videos), 2 * offset / 2**30, path)
        return cls(path, layout)
