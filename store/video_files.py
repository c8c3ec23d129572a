"""Where a video's data lives: one file per video, ``STORE/videos/<key>.zip``, whatever the video's length.

The file is a zip of uncompressed entries holding the video's Zarr v3 group (zarr's ``ZipStore`` and fsspec's
``zip::`` URLs read it as they read a folder)::

    zarr.json                  the group; attributes["video"]: status, error, frame indices, ..., checksums
    rgb/zarr.json, rgb/c/...   (frames, channels, K, K) float16, chunks of about CHUNK_BYTES
    flow/..., flow_cnn/...     the other streams, the same way

``zarr.json`` is the first entry, so a video's status is read from the file's first bytes (one read, one ranged
request on an object store). The writer of a video builds the whole group in memory and writes the file under a
temporary name beside it (``.<key>.zip.tmp<pid>``, :func:`glimpse.files.atomic_writer`), then renames it into
place: one writer per file by construction, and a crash leaves a temporary file (removed by ``store gc``), never a
half video. A failed video is a file whose group holds no array.

Stores written before this layout kept each array of each video in its own folder of chunk files
(``STORE/videos/<key>/<stream>/c/...``); :func:`upgrade_video_layout` converts them, and readers refuse them with a
one-line error that says so (:func:`old_layout`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from zarr.storage import FsspecStore, MemoryStore, ZipStore

from glimpse.files import atomic_writer
from glimpse.store.layout import VIDEO_ATTR, VIDEOS_GROUP
from glimpse.store.remote import is_url, join, url_fs
from glimpse.store.schema import DONE, FAILED, StoreError

SUFFIX = ".zip"
#: A zip's local file header: signature, versions, flags, method, time, date, crc, sizes, name and extra lengths.
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50
#: Bytes read first for a video's status: its group's zarr.json, when small, comes in this one read.
_HEAD = 16 * 1024


def video_name(key: str) -> str:
    """The file of video ``key`` relative to its store's root (``videos/<key>.zip``): what messages name."""
    return f"{VIDEOS_GROUP}/{key}{SUFFIX}"


def video_path(store: str | Path, key: str) -> str:
    """The file of video ``key`` in the store at ``store`` (a local path or a URL)."""
    return join(str(store), video_name(key))


def video_bytes(store: str | Path, key: str, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """Bytes of video ``key``'s file; None when the store holds no file for it."""
    location = video_path(store, key)
    try:
        if is_url(location):
            fs, inner = url_fs(location, storage_options)
            return int(fs.size(inner))
        return os.stat(location).st_size
    except FileNotFoundError:
        return None


def video_keys(store: str | Path) -> list[str]:
    """Keys of every video file in a local store (temporary files of writers left out), sorted."""
    folder = Path(store) / VIDEOS_GROUP
    if not folder.is_dir():
        return []
    return sorted(e.name[: -len(SUFFIX)] for e in os.scandir(folder)
                  if e.name.endswith(SUFFIX) and not e.name.startswith("."))


def temporary_files(store: str | Path) -> list[tuple[str, Path]]:
    """(video key, path) of every temporary file a writer left in a local store (``.<key>.zip.tmp<pid>``)."""
    folder = Path(store) / VIDEOS_GROUP
    if not folder.is_dir():
        return []
    found = []
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(".") and f"{SUFFIX}.tmp" in name:
            found.append((name[1:].rsplit(f"{SUFFIX}.tmp", 1)[0], Path(entry.path)))
    return sorted(found)


def old_layout(store: str | Path) -> bool:
    """Whether a local store keeps its videos one folder per video (the layout :func:`upgrade_video_layout`
    converts); one directory entry is looked at, so it costs the same for any number of videos."""
    folder = Path(store) / VIDEOS_GROUP
    if is_url(str(store)) or not folder.is_dir():
        return False
    for entry in os.scandir(folder):  # the first video folder or video file found tells
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            return True
        if entry.name.endswith(SUFFIX):
            return False
    return False


def refuse_old_layout(store: str | Path) -> None:
    """A StoreError telling to upgrade when the local store at ``store`` has the per-array layout."""
    if old_layout(store):
        raise StoreError(f"{store}: its videos are stored one folder per video (an older glimpse's layout); "
                         f"convert it with 'python -m glimpse.store upgrade {store}'")


def write_video_file(store: str | Path, key: str, attrs: Mapping[str, Any],
                     arrays: Mapping[str, tuple[np.ndarray, Any, tuple[str, ...] | None, int]]) -> int:
    """Write video ``key``'s file at once: a group with attributes ``attrs`` and one array per stream
    (name -> (data, zarr compressor or None, dimension names, frames per chunk)); returns its bytes.

    The group is built in memory and the file appears complete or not at all (an earlier file is replaced).
    """
    entries: dict[str, Any] = {}
    group = zarr.open_group(store=MemoryStore(entries), mode="w", zarr_format=3, attributes=dict(attrs))
    for name, (data, codec, dims, per) in arrays.items():
        group.create_array(name, data=data, chunks=(min(len(data), per) or 1, *data.shape[1:]), compressors=codec,
                           dimension_names=dims)
    target = Path(video_path(store, key))
    with atomic_writer(target) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(entries, key=lambda n: (n != "zarr.json", n)):  # the group's metadata first
            z.writestr(name, entries[name].to_bytes())
    return target.stat().st_size


def remove_video(store: str | Path, key: str) -> None:
    """Remove whatever a local store holds of video ``key`` (its file, or its folder of the old layout)."""
    Path(video_path(store, key)).unlink(missing_ok=True)
    folder = Path(store) / VIDEOS_GROUP / key
    if folder.is_dir():
        shutil.rmtree(folder)


def _first_entry(read: Any) -> dict[str, Any] | None:
    """The JSON of a video file's first entry when it is an uncompressed ``zarr.json`` (None otherwise);
    ``read(start, end)`` returns the file's bytes start..end."""
    head = read(0, _HEAD)
    if len(head) < _LOCAL.size:
        return None
    sig, _v, flags, method, _t, _d, _crc, size, _usize, name_len, extra_len = _LOCAL.unpack_from(head)
    start = _LOCAL.size + name_len + extra_len
    if sig != _LOCAL_SIGNATURE or method != zipfile.ZIP_STORED or flags & 0x08 or \
            head[_LOCAL.size : _LOCAL.size + name_len] != b"zarr.json":
        return None
    body = head[start : start + size]
    if len(body) < size:
        body += read(start + len(body), start + size)
    return json.loads(body)


def read_video_attrs(store: str | Path, key: str,
                     storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Video ``key``'s attributes["video"] (None when the store holds no file for it, or no such attribute).

    Raises FileNotFoundError when there is no file, other exceptions when it is broken."""
    location = video_path(store, key)
    if is_url(location):
        fs, inner = url_fs(location, storage_options)
        meta = _first_entry(lambda a, b: fs.cat_file(inner, a, b))
    else:
        with open(location, "rb") as f:
            def read(a: int, b: int) -> bytes:
                f.seek(a)
                return f.read(b - a)
            meta = _first_entry(read)
    if meta is None:  # not written by glimpse's writer: the zip's own directory finds it
        with opened_video(store, key, storage_options) as group:
            return cast("dict[str, Any] | None", group.attrs.get(VIDEO_ATTR))
    return meta["attributes"].get(VIDEO_ATTR)


def open_video(store: str | Path, key: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """Video ``key``'s group, read-only; FileNotFoundError when the store holds no file for it. A local file is
    opened through zarr's ZipStore (closed with :func:`close_video`, reopened by zarr on its next read), a URL's
    through fsspec's ``zip::`` chaining (ranged reads)."""
    location = video_path(store, key)
    if is_url(location):
        protocol = location.split("://", 1)[0]
        options = {protocol: dict(storage_options)} if storage_options else None
        fs, inner = url_fs(location, storage_options)
        if not fs.exists(inner):
            raise FileNotFoundError(location)
        return zarr.open_group(store=FsspecStore.from_url(f"zip::{location}", storage_options=options,
                                                          read_only=True), mode="r")
    if not os.path.isfile(location):
        raise FileNotFoundError(location)
    return zarr.open_group(store=ZipStore(location, mode="r"), mode="r")


def close_video(group: zarr.Group) -> None:
    """Release the file a group of :func:`open_video` holds open (a local ZipStore); nothing for others."""
    if isinstance(group.store, ZipStore):
        group.store.close()


@contextmanager
def opened_video(store: str | Path, key: str,
                 storage_options: Mapping[str, Any] | None = None) -> Iterator[zarr.Group]:
    """:func:`open_video`, closed at the end of the block."""
    group = open_video(store, key, storage_options)
    try:
        yield group
    finally:
        close_video(group)


def entry_spans(path: str | Path, prefix: str) -> dict[str, tuple[int, int]]:
    """Entry name (``prefix`` removed) -> (offset of its local header, bytes) of every uncompressed entry of the
    local zip at ``path`` under ``prefix``: where the direct chunk reader finds a chunk inside a video file."""
    with zipfile.ZipFile(path) as z:
        return {i.filename[len(prefix):]: (i.header_offset, i.file_size) for i in z.infolist()
                if i.filename.startswith(prefix) and i.compress_type == zipfile.ZIP_STORED}


def data_offset(f: Any, header_offset: int) -> int:
    """Where the bytes of the zip entry whose local header is at ``header_offset`` start, in the open file ``f``."""
    header = os.pread(f.fileno(), _LOCAL.size, header_offset)
    if len(header) < _LOCAL.size or _LOCAL.unpack(header)[0] != _LOCAL_SIGNATURE:
        raise StoreError(f"{f.name}: no zip entry header at byte {header_offset}")
    *_, name_len, extra_len = _LOCAL.unpack(header)
    return header_offset + _LOCAL.size + name_len + extra_len


def upgrade_video_layout(path: str | Path) -> int:
    """Convert the local store at ``path`` from one folder per video (each array its own folder of chunk files) to
    one file per video; returns how many videos were converted.

    Each video's arrays keep their values, codec, chunking and dimension names, and its attributes (checksums
    included) are copied as they are; a folder without attributes (a writer killed half-way) is removed, its video
    pending. Each video's file is written before its folder is removed, so a crash loses nothing and running this
    again finishes the work. Videos a live writer holds (store.claims) are refused with a StoreError.
    """
    from glimpse.store.claims import claim_video

    folder = Path(path) / VIDEOS_GROUP
    if not folder.is_dir():
        raise StoreError(f"{path}: no {VIDEOS_GROUP}/ folder; not a glimpse store")
    converted = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        key = entry.name
        with claim_video(path, key, note="store upgrade") as held:
            if not held:
                raise StoreError(f"{path}: video {key} is being written by a live run; upgrade when it ends")
            try:
                old = zarr.open_group(entry.path, mode="r", zarr_format=3)
            except Exception:  # no group metadata: a writer killed before it wrote any
                shutil.rmtree(entry.path)
                continue
            attrs: dict[str, Any] = dict(old.attrs)
            if VIDEO_ATTR in attrs and attrs[VIDEO_ATTR].get("status") in (DONE, FAILED):
                arrays: dict[str, Any] = {name: (array[...], array.compressors[0] if array.compressors else None,
                                 getattr(array.metadata, "dimension_names", None), array.chunks[0])
                          for name, array in old.arrays()}
                write_video_file(path, key, attrs, arrays)
                converted += 1
            shutil.rmtree(entry.path)
    return converted
