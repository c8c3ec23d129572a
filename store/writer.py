"""Writing a store: created once by the extraction client, filled one video at a time by tasks.

Each task owns one video's file (store.video_files): its group, arrays and attributes are built in memory and
written under a temporary name, then renamed into place, so a video is "done" only when all of its data is on disk.
A task killed half-way leaves a temporary file (ignored by readers, removed by ``store gc``) and the video pending.
"""

from __future__ import annotations

import getpass
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from glimpse.files import publish_folder
from glimpse.store.claims import CLAIMS_DIR, creation_lock
from glimpse.store.index import IndexLog, IndexState, video_bytes, write_snapshot
from glimpse.store.layout import (
    DEFAULT_CODEC,
    ROOT_ATTR,
    VIDEO_ATTR,
    VIDEOS_GROUP,
    array_checksum,
    compressor,
    config_hash,
    frames_per_chunk,
    video_key,
)
from glimpse.store.manifest import read_keys, write_manifest
from glimpse.store.reader import StoreError, _open_root, read_meta
from glimpse.store.schema import (
    DONE,
    FAILED,
    PENDING,
    WRITING,
    ManifestRow,
    SchemaError,
    StoreMeta,
    StreamInfo,
    VideoRecord,
    VideoResult,
)
from glimpse.store.video_files import read_video_attrs, refuse_old_layout, remove_video, write_video_file

# The default codec, zstd: on ReLU cubes (half zeros) it beat Blosc-zstd with byte or bit shuffle in
# bench/bench_extract.py (1.08 against 1.12 and 1.40 bytes per value). Level 3 stores as small as level 5 and
# decodes as fast (bench/bench_loading.py's codec table); only the LZ codecs (Blosc-LZ4HC with bit shuffle,
# Blosc-LZ4) or no compression decode faster, at 1.76-2.0 bytes per value: a store's ``codec`` chooses.


class StoreExistsError(StoreError):
    """The target path holds a store made with another config (or something that is not a store)."""


def manifest_row(record: VideoRecord) -> ManifestRow:
    """The part of a video's description fixed at store creation."""
    return ManifestRow(id=record.id, key=video_key(record.id), path=record.path, labels=tuple(record.labels),
                       splits=dict(record.splits), group=record.group, fingerprint=record.fingerprint)


def create_store(
    path: str | Path,
    *,
    dataset: str,
    classes: Sequence[str],
    records: Sequence[VideoRecord],
    config: Mapping[str, Any],
    streams: Mapping[str, Mapping[str, Any] | StreamInfo],
    info: Mapping[str, Any] | None = None,
    multi_label: bool | None = None,
    overwrite: bool = False,
    codec: str | None = None,
) -> StoreWriter:
    """Create the store at ``path``, or reopen it when it holds the same config (a resume).

    ``streams`` describes each stream (a :class:`StreamInfo`, or its fields without ``dims``, which come from the
    stream registry); ``info`` fills the other :class:`StoreMeta` fields (backbone, layer, weights, versions,
    source, ...). ``multi_label`` is the dataset adapter's declaration (None: whether any record has several
    labels). ``codec`` names how chunks are stored (:data:`store.layout.CODECS`; None: zstd for a new store,
    the store's own when resuming). A store made with a different config, or another codec than one asked for, is
    refused with :class:`StoreExistsError` unless ``overwrite``; a non-empty directory that is not a store is
    always refused (nothing is deleted that glimpse did not write).
    """
    path = Path(path)
    _refuse_non_store(path)
    keys = [video_key(r.id) for r in records]
    if len(set(keys)) != len(keys):
        raise StoreError(f"{path}: dataset {dataset!r} has duplicate video ids")
    try:
        meta = StoreMeta.from_dict({
            "dataset": dataset, "classes": list(classes), "config": dict(config), "config_hash": config_hash(config),
            "streams": {name: (desc if isinstance(desc, StreamInfo) else StreamInfo.of(name, **desc)).to_dict()
                        for name, desc in streams.items()},
            "videos": [manifest_row(r).to_dict() for r in records],
            "multi_label": any(len(r.labels) > 1 for r in records) if multi_label is None else multi_label,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "created_by": getpass.getuser(),
            "codec": codec or DEFAULT_CODEC, **dict(info or {}),
        })
    except SchemaError as exc:
        raise StoreError(f"{path}: cannot create the store: {exc}") from None
    with creation_lock(path):  # two runs started together: the second sees the first's store
        return _create_or_reopen(path, meta, overwrite, codec is not None)


def create_copy(path: str | Path, meta: StoreMeta) -> StoreWriter:
    """Create a store at ``path`` with another store's metadata ``meta`` (or reopen it when it holds the same
    config and codec: an interrupted copy). Refused as :func:`create_store` refuses."""
    path = Path(path)
    _refuse_non_store(path)
    with creation_lock(path):
        return _create_or_reopen(path, meta, False, True)


def _refuse_non_store(path: Path) -> None:
    """A StoreExistsError when ``path`` is a file, or a non-empty directory that holds no store (a wrong --out)."""
    if path.exists() and not path.is_dir():
        raise StoreExistsError(f"{path}: is a file, not a store or a folder to make one in; refusing to write")
    if path.is_dir() and any(p.name != CLAIMS_DIR and not p.name.startswith(STAGING_PREFIX) for p in path.iterdir()):
        try:
            _open_root(path, "r")
        except StoreError as exc:  # checked before the claims folder is made: a wrong --out is left untouched
            raise StoreExistsError(f"{path}: exists and is not a glimpse store; refusing to write ({exc})") from exc


#: Prefix of the folder a new store is built in before its parts are renamed into place (root metadata last).
STAGING_PREFIX = ".creating-"


def _create_or_reopen(path: Path, meta: StoreMeta, overwrite: bool, codec_asked: bool) -> StoreWriter:
    for staging in path.glob(f"{STAGING_PREFIX}*"):  # a creation killed half-way (we hold the creation lock)
        shutil.rmtree(staging, ignore_errors=True)
    contents = [p for p in path.iterdir() if p.name != CLAIMS_DIR]
    if contents:
        try:
            old = read_meta(_open_root(path, "r"), str(path))
        except StoreError as exc:
            raise StoreExistsError(f"{path}: exists and is not a glimpse store; refusing to write ({exc})") from exc
        if old.config_hash == meta.config_hash and not overwrite:
            if codec_asked and old.codec != meta.codec:
                raise StoreExistsError(
                    f"{path}: holds these features stored with codec {old.codec}, this run asks for {meta.codec}; "
                    f"leave --codec out to finish it as it is, pass --overwrite to replace it, or choose another --out"
                )
            return StoreWriter(path)
        if not overwrite:
            raise StoreExistsError(
                f"{path}: holds a store made with another config ({config_difference(old.config, meta.config)}; "
                f"hash {old.config_hash}, this run {meta.config_hash}); pass --overwrite to replace it, or choose "
                "another --out"
            )
        for item in contents:  # the claims folder stays: its locks may be held right now
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    # Under the creation lock with nothing but the claims folder here. The store is built beside, then moved in with
    # its root metadata last: a reader that sees zarr.json sees the whole manifest (schema 2 held it in zarr.json).
    staging = path / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
    root = zarr.open_group(str(staging), mode="w", zarr_format=3, attributes={ROOT_ATTR: meta.head_dict()})
    write_manifest(root, meta.videos)
    root.create_group(VIDEOS_GROUP)
    write_snapshot(staging, IndexState.empty(len(meta.videos)))
    publish_folder(staging, path, last="zarr.json")
    return StoreWriter(path)


def config_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between two extraction configs, in words: ``manifest`` (the dataset's videos, labels, splits or
    source files), then each other field with both values."""
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    said = ["another dataset (its videos, labels, splits or source files differ)" if k == "manifest"
            else f"{k} {old.get(k)!r} there, {new.get(k)!r} here" for k in names]
    return ", ".join(said) or "the same fields, hashed otherwise"


class StoreWriter:
    """Writes videos into an existing store; constructed in constant time (the root attributes only, never the
    manifest), so each task may make its own. Every status change is also a line of this writer's index log."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._root = _open_root(self.path, "r+")
        refuse_old_layout(self.path)
        self.metadata: StoreMeta = read_meta(self._root, str(self.path))  # without the manifest (schema 3)
        self.compressor = compressor(self.metadata.codec)
        self.index = IndexLog(self.path)

    @cached_property
    def keys(self) -> frozenset[str]:
        """Every video key of the manifest (read on first use)."""
        return frozenset(read_keys(self._root))

    def status(self, key: str) -> str:
        """The video's status as stored right now (pending when nothing is written yet)."""
        try:
            attrs = read_video_attrs(self.path, key)
        except FileNotFoundError:
            return PENDING
        return (attrs or {}).get("status", PENDING)

    def reset(self, key: str) -> None:
        """Remove whatever the store holds of a video, back to pending. The caller holds its claim."""
        if key not in self.keys:
            raise StoreError(f"{self.path}: no video with key {key!r} in this store's manifest")
        remove_video(self.path, key)
        self.index.append(key, PENDING)

    def write_video(self, key: str, arrays: Mapping[str, np.ndarray],
                    result: VideoResult | Mapping[str, Any]) -> VideoResult:
        """Write a finished video's arrays (cast to float16), then mark it done. Returns the result written.

        ``result`` is a :class:`VideoResult` (or its fields as a mapping); its status, error and checksums are set
        here. Raises ValueError, before anything is marked done, when a stream is missing, unexpected, or holds
        values that are not finite in float16, and SchemaError when ``result`` has a field the schema lacks.
        """
        result = result if isinstance(result, VideoResult) else VideoResult.from_dict(result)
        expected = set(self.metadata.streams)
        if set(arrays) != expected:
            raise ValueError(f"video {key}: streams {sorted(arrays)} given, the store holds {sorted(expected)}")
        cast = {}
        for name, data in arrays.items():
            half = np.ascontiguousarray(data, dtype=np.float16)
            if not np.isfinite(half).all():
                raise ValueError(f"video {key}: stream {name} has values that are NaN or overflow float16")
            cast[name] = half
        checksums = {n: array_checksum(a) for n, a in cast.items()}
        done = replace(result, status=DONE, error=None, checksums=checksums)
        self.index.append(key, WRITING)  # a writer killed now leaves the index "writing": settled from the file
        write_video_file(self.path, key, {VIDEO_ATTR: done.to_dict()}, {
            name: (half, self.compressor, self.metadata.streams[name].dims, frames_per_chunk(half.shape[1:]))
            for name, half in cast.items()})
        self.index.append(key, DONE, done.n_frames, video_bytes(self.path, key), device=done.device)
        return done

    def write_failure(self, key: str, error: str, result: VideoResult | Mapping[str, Any] | None = None) -> VideoResult:
        """Record that a video failed, with the reason; any partial data of it is removed."""
        result = result if isinstance(result, VideoResult) else VideoResult.from_dict(result or {})
        failed = replace(result, status=FAILED, error=error)
        self.index.append(key, WRITING)
        write_video_file(self.path, key, {VIDEO_ATTR: failed.to_dict()}, {})
        self.index.append(key, FAILED, nbytes=video_bytes(self.path, key), error=error)
        return failed
