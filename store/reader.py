"""Read-only access to a store: what training and evaluation use.

    from glimpse.store import open_store
    s = open_store("stores/ucf11")
    s.videos                  # list[VideoEntry], every video of the dataset with its status
    s.read(video_id, "rgb")   # (frames, channels, K, K) float16
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from glimpse.errors import GlimpseError
from glimpse.store.layout import ROOT_ATTR, VIDEO_ATTR, VIDEOS_GROUP
from glimpse.store.schema import DONE, PENDING, SCHEMA_VERSION, STREAMS, UNREADABLE, VideoEntry
from zarr.errors import GroupNotFoundError


class StoreError(GlimpseError, RuntimeError):
    """A path that is no store, a store of another schema, or a read of something not there."""


def _open_root(path: str | Path, mode: str = "r", storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
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
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{location}: store schema version {version}, this glimpse reads version {SCHEMA_VERSION}; "
            "re-extract it, or use the glimpse release that wrote it"
        )
    return root


def entry_from(manifest_row: Mapping[str, Any], result: Mapping[str, Any] | None) -> VideoEntry:
    """Merge a manifest row (written at creation) with a video's result attributes (written last)."""
    result = dict(result or {})
    boxes = result.get("boxes")
    return VideoEntry(
        id=manifest_row["id"],
        key=manifest_row["key"],
        path=manifest_row["path"],
        labels=tuple(manifest_row["labels"]),
        splits=dict(manifest_row["splits"]),
        group=manifest_row.get("group"),
        status=result.get("status", PENDING),
        error=result.get("error"),
        n_frames=int(result.get("n_frames", 0)),
        frame_indices=tuple(result.get("frame_indices", ())),
        timestamps=tuple(result.get("timestamps", ())),
        boxes=None if boxes is None else tuple(tuple(float("nan") if v is None else v for v in b) for b in boxes),
        source=dict(result.get("source", {})),
        checksums=dict(result.get("checksums", {})),
    )


class Store:
    """A read-only view of one store. Never writes; works on read-only mounts."""

    def __init__(self, path: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        self.path = str(path)
        self._root = _open_root(path, "r", storage_options)
        self.meta: dict[str, Any] = dict(self._root.attrs[ROOT_ATTR])

    def __repr__(self) -> str:
        return f"Store({self.path!r}, dataset={self.dataset!r}, videos={len(self.manifest)})"

    @property
    def root(self) -> zarr.Group:
        """The store's root Zarr group, opened read-only (for tools that check the raw arrays)."""
        return self._root

    @property
    def config(self) -> dict[str, Any]:
        """The full extraction config the store was made with."""
        return dict(self.meta["config"])

    @property
    def config_hash(self) -> str:
        return self.meta["config_hash"]

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def streams(self) -> dict[str, dict[str, Any]]:
        """Stream name -> description (dims, per-frame shape, backbone / flow method)."""
        return dict(self.meta["streams"])

    @property
    def manifest(self) -> list[dict[str, Any]]:
        return list(self.meta["videos"])

    def _node(self, row: Mapping[str, Any]) -> tuple[zarr.Group | None, Mapping[str, Any] | None]:
        """A video's group and result attributes: (None, None) while nothing is written, and an
        "unreadable" result when its metadata is broken."""
        node_path = f"{VIDEOS_GROUP}/{row['key']}"
        try:
            node = self._root[node_path]
            return node, node.attrs.get(VIDEO_ATTR)
        except KeyError:
            return None, None
        except Exception as exc:  # one broken video never hides the others (nor crashes a trainer)
            reason = f"{self.path}/{node_path}/zarr.json: {type(exc).__name__}: {exc}"
            return None, {"status": UNREADABLE, "error": reason}

    def _result(self, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return self._node(row)[1]

    @property
    def videos(self) -> list[VideoEntry]:
        """Every video of the dataset in manifest order, with its current status (read fresh each call)."""
        return [entry_from(row, self._result(row)) for row in self.manifest]

    @cached_property
    def _by_id(self) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.manifest}

    def video(self, video_id: str) -> VideoEntry:
        """The entry of one video, read fresh."""
        row = self._row(video_id)
        return entry_from(row, self._result(row))

    def _row(self, video_id: str) -> dict[str, Any]:
        try:
            return self._by_id[video_id]
        except KeyError:
            raise StoreError(f"{self.path}: no video {video_id!r} in this store") from None

    def read(self, video_id: str, stream: str = "rgb", frames: slice | None = None) -> np.ndarray:
        """The stored array of one finished video: rgb / flow_cnn (frames, C, K, K), flow (frames, 2, H, W).

        ``frames`` reads only a slice of frames (only the chunks it touches are fetched).
        """
        if stream not in STREAMS:
            raise StoreError(f"unknown stream {stream!r}; streams are {STREAMS}")
        if stream not in self.streams:
            have = sorted(self.streams)
            raise StoreError(f"{self.path}: stream {stream!r} was not extracted (this store has {have})")
        node, result = self._node(self._row(video_id))
        status = (result or {}).get("status", PENDING)
        if status != DONE:
            raise StoreError(f"{self.path}: video {video_id!r} is {status}, not done; nothing to read")
        return node[stream][frames if frames is not None else slice(None)]


def open_store(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Open a store read-only (a local path or an fsspec URL such as ``file:///...`` or ``s3://...``)."""
    return Store(path, storage_options)
