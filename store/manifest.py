"""The manifest of a store (schema 3): one Zarr group ``manifest/`` of 1-D arrays, one row per video, read in one go.

    STORE/manifest/id, key, path          (videos,) strings
    STORE/manifest/labels                 (sum of labels,) int32: every video's class indices, one after the other
    STORE/manifest/label_end              (videos,) int64: where each video's labels end in ``labels``
    STORE/manifest/splits                 (videos, splits) int8: index into SPLIT_ROLES, -1 where the video has none;
                                          the split names are the group's attribute "split_names"
    STORE/manifest/group, fingerprint     (videos,) strings, "" where the mask group_set / fingerprint_set is False

Plain zarr reads it (``zarr.open_group(STORE)["manifest/id"][:]``); glimpse reads the whole group with one request
per array, so opening a store of 650,000 videos no longer parses a 170 MB JSON attribute (schema 2 kept the rows in
the root attributes).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import numpy as np
import zarr

from glimpse.store.schema import SPLIT_ROLES, ManifestRow

MANIFEST_GROUP = "manifest"
_STRINGS = ("id", "key", "path", "group", "fingerprint")


def write_manifest(root: zarr.Group, rows: Sequence[ManifestRow]) -> None:
    """Write ``rows`` as the store's ``manifest/`` group (replacing one there)."""
    n = len(rows)
    split_names = sorted({name for row in rows for name in row.splits}, key=lambda k: (len(k), k))
    splits = np.full((n, len(split_names)), -1, dtype=np.int8)  # (videos, splits)
    for i, row in enumerate(rows):
        for j, name in enumerate(split_names):
            if name in row.splits:
                splits[i, j] = SPLIT_ROLES.index(row.splits[name])
    labels = np.array([lab for row in rows for lab in row.labels], dtype=np.int32)
    columns: dict[str, np.ndarray] = {
        "id": np.array([r.id for r in rows], dtype=str),
        "key": np.array([r.key for r in rows], dtype=str),
        "path": np.array([r.path for r in rows], dtype=str),
        "group": np.array([r.group or "" for r in rows], dtype=str),
        "group_set": np.array([r.group is not None for r in rows], dtype=bool),
        "fingerprint": np.array([r.fingerprint or "" for r in rows], dtype=str),
        "fingerprint_set": np.array([r.fingerprint is not None for r in rows], dtype=bool),
        "labels": labels,
        "label_end": np.cumsum([len(r.labels) for r in rows], dtype=np.int64),
        "splits": splits,
    }
    group = root.create_group(MANIFEST_GROUP, overwrite=True, attributes={"split_names": split_names, "videos": n})
    for name, data in columns.items():
        dtype = str if name in _STRINGS else data.dtype
        array = group.create_array(name, shape=data.shape, dtype=dtype, chunks=tuple(max(1, s) for s in data.shape))
        if data.size:
            array[...] = data


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cycle collector paused while hundreds of thousands of acyclic records are made (it would scan them
    all again and again: Store.videos took 2.7 s at 100,000 videos and 0.12 s at 10,000)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _column(group: zarr.Group, name: str) -> np.ndarray:
    """One column of the manifest, whole (one array read)."""
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise KeyError(f"{MANIFEST_GROUP}/{name} is not an array")
    return np.asarray(array[...])


def read_keys(root: zarr.Group) -> list[str]:
    """Every video's key in manifest order (one array read)."""
    return [str(k) for k in _column(root, f"{MANIFEST_GROUP}/key").tolist()]


def read_manifest(root: zarr.Group) -> tuple[ManifestRow, ...]:
    """Every row of the store's manifest, in order (about 1 s at 650,000 videos)."""
    group = root[MANIFEST_GROUP]
    assert isinstance(group, zarr.Group)
    split_names = [str(name) for name in cast(list, group.attrs.get("split_names", []))]
    col = {name: _column(group, name) for name in group.array_keys()}  # one read per column
    n = len(col["id"])
    if n == 0:
        return ()
    strings = {name: col[name].tolist() for name in _STRINGS}
    ends = col["label_end"].tolist()
    flat = col["labels"].tolist()
    codes = col["splits"].tolist()  # (videos, splits) as lists
    group_set, fp_set = col["group_set"].tolist(), col["fingerprint_set"].tolist()
    with paused_gc():
        rows = _rows(n, strings, flat, ends, codes, split_names, group_set, fp_set)
    return tuple(rows)


def _rows(n: int, strings: dict, flat: list, ends: list, codes: list, split_names: list, group_set: list,
          fp_set: list) -> list[ManifestRow]:
    """The rows of the columns read by :func:`read_manifest`."""
    rows, start, new = [], 0, object.__new__
    for i in range(n):  # built without __init__: the values were checked when the manifest was written
        row = new(ManifestRow)
        row.__dict__.update(
            id=strings["id"][i], key=strings["key"][i], path=strings["path"][i],
            labels=tuple(flat[start:ends[i]]),
            splits={name: SPLIT_ROLES[c] for name, c in zip(split_names, codes[i], strict=True) if c >= 0},
            group=strings["group"][i] if group_set[i] else None,
            fingerprint=strings["fingerprint"][i] if fp_set[i] else None,
        )
        start = ends[i]
        rows.append(row)
    return rows
