"""Where things live inside a store, and the few pure functions both the reader and writer need.

A store is one Zarr v3 group::

    STORE/zarr.json                  attributes["glimpse"]: schema version, dataset, classes, config and
                                     its hash, backbone, layer, weights, versions, the video manifest
    STORE/videos/<key>.zip           one file per video (store/video_files.py), holding its Zarr group:
        zarr.json                    attributes["video"]: status, error, frame indices, timestamps, boxes,
                                     checksums; the file appears whole, so "done" means every array is complete
        rgb/                         (frames, channels, K, K) float16
        flow/                        (frames, 2, H, W) float16, channel 0 = x (right), 1 = y (down), pixels
        flow_cnn/                    (frames, channels, K, K) float16

Every video has its own file, written by one task, so no two extraction tasks ever write the same chunk or shard
(zarr issues 3514 and 3682: unaligned concurrent shard writes lose data).
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

ROOT_ATTR = "glimpse"
VIDEO_ATTR = "video"
VIDEOS_GROUP = "videos"

#: Bytes of uncompressed data aimed at per chunk: 5 frames of 1024 x 7 x 7 float16, so a random 30-frame clip
#: decodes 30-35 frames, not 40-60 (bench/bench_loading.py measures the candidates).
CHUNK_BYTES = 512 * 1024

#: How chunk bytes are stored, by name (the store's ``codec`` field, ``--codec`` at extraction); bench/bench_loading.py
#: measures each on ReLU-like cubes (half zeros). zstd level 3, the default: 1.18 bytes per value, decoded at
#: about 0.5 GB/s per core. lz4: Blosc-LZ4HC with bit shuffle, 1.76 bytes per value, about twice as fast to
#: decode. none: raw float16, 2 bytes per value, read straight into the caller's memory (no decoding at all).
#: A store's arrays name their own codec in their metadata; readers follow that.
CODECS = ("zstd", "lz4", "none")
DEFAULT_CODEC = "zstd"

#: The dtypes a stream is exported as (``store export --dtype``; store/hdf5.py).
EXPORT_DTYPES = ("float32", "float16")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def video_key(video_id: str) -> str:
    """A name for ``video_id`` that is safe as a Zarr node on every file system and object store.

    Ids made only of safe characters keep their look (``/`` becomes ``__``); anything else gets
    a short hash suffix so that two ids never share a key.
    """
    readable = _UNSAFE.sub("_", video_id.replace("/", "__")).strip("._") or "video"
    if readable == video_id.replace("/", "__"):
        return readable
    return f"{readable[:80]}-{hashlib.sha256(video_id.encode()).hexdigest()[:8]}"


def config_hash(config: dict) -> str:
    """A stable hash of an extraction config (canonical JSON), 16 hex digits."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def array_checksum(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order, as recorded at write time and checked by verify."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def compressor(codec: str):
    """The zarr compressor of a codec name of :data:`CODECS` (None: no compression)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "zstd":
        return ZstdCodec(level=3)
    if codec == "lz4":
        return BloscCodec(cname="lz4hc", clevel=9, shuffle="bitshuffle")
    if codec == "none":
        return None
    raise ValueError(f"unknown codec {codec!r}; codecs are {', '.join(CODECS)}")


def frames_per_chunk(frame_shape: tuple[int, ...], itemsize: int = 2) -> int:
    """How many frames of ``frame_shape`` fill about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (int(np.prod(frame_shape)) * itemsize))
