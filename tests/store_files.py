"""Editing a video's file in place, as a damaged disk or a hand edit would: what store tests corrupt."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import ZipStore

from glimpse.store.video_files import opened_video, video_path, write_video_file


def edit_entry(store: str | Path, key: str, name: str, change: Callable[[bytes], bytes | None]) -> None:
    """Rewrite entry ``name`` of video ``key``'s file (zip) to ``change(its bytes)``; None removes the entry
    (a name that is a folder, ``rgb/``, removes every entry under it). The other entries keep their bytes and order.
    """
    edit_zip(video_path(store, key), name, change)


def edit_zip(path: str | Path, name: str, change: Callable[[bytes], bytes | None]) -> None:
    """:func:`edit_entry` of the zip at ``path``."""
    path = Path(path)
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    assert any(n == name or (name.endswith("/") and n.startswith(name)) for n, _ in entries), (name, entries[:3])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for entry, data in entries:
            if name.endswith("/") and entry.startswith(name):
                continue
            changed = change(data) if entry == name else data
            if changed is not None:
                z.writestr(entry, changed)


def zipped_array(path: Path, data, **create) -> zarr.Array:
    """``data`` stored as a Zarr array at the root of a zip at ``path`` (``create``: zarr.create_array's options),
    opened read-only: the direct reader's input, as in a video's file with prefix ''."""
    store = ZipStore(path, mode="w")
    zarr.create_array(store, data=data, **create)
    store.close()
    return zarr.open_array(ZipStore(path, mode="r"), mode="r")


def chunk_entries(store: str | Path) -> dict[str, bytes]:
    """Every chunk of every video file of a store, by ``<key>/<entry name>`` (metadata entries left out)."""
    found = {}
    for path in sorted((Path(store) / "videos").glob("*.zip")):
        with zipfile.ZipFile(path) as z:
            found.update({f"{path.stem}/{i.filename}": z.read(i) for i in z.infolist() if "/c/" in i.filename})
    return found


def rewrite_stream(store: str | Path, key: str, stream: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace stream ``stream`` of video ``key`` with ``change(its values)``, its codec, chunks and the video's
    attributes (checksums included) kept: data changed behind the store's back."""
    with opened_video(store, key) as video:
        attrs = dict(video.attrs)
        arrays: dict[str, Any] = {name: (array[...], array.compressors[0] if array.compressors else None,
                                         getattr(array.metadata, "dimension_names", None), array.chunks[0])
                                  for name, array in video.arrays()}
    data, *rest = arrays[stream]
    arrays[stream] = (change(data), *rest)
    write_video_file(store, key, attrs, arrays)
