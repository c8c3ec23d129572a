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
from dataclasses import dataclass
from itertools import repeat
from typing import Any, cast

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
    return cast(list[str], _column(root, f"{MANIFEST_GROUP}/key").tolist())


@dataclass(frozen=True)
class ManifestColumns:
    """The manifest as read: one Python list per field, in manifest order (what :class:`ManifestRow` objects and a
    store's entries are built from, a whole column at a time). A row's splits are ``split_maps[split_of[i]]``: one
    mapping per distinct combination of roles, copied for each row that is handed out."""

    ids: list[str]
    keys: list[str]
    paths: list[str]
    labels: list[tuple[int, ...]]
    groups: list[str | None]
    fingerprints: list[str | None]
    split_maps: tuple[dict[str, str], ...]
    split_of: list[int]

    def splits(self) -> list[dict[str, str]]:
        """Every row's splits, each its own dict."""
        return list(map(dict.copy, map(self.split_maps.__getitem__, self.split_of)))

    def row(self, at: int) -> ManifestRow:
        """The row at position ``at``."""
        return ManifestRow(self.ids[at], self.keys[at], self.paths[at], self.labels[at],
                           dict(self.split_maps[self.split_of[at]]), self.groups[at], self.fingerprints[at])

    def rows(self) -> tuple[ManifestRow, ...]:
        """Every row, in order (built without __init__: the values were checked when the manifest was written)."""
        with paused_gc():
            values = [{"id": i, "key": k, "path": p, "labels": lab, "splits": s, "group": g, "fingerprint": f}
                      for i, k, p, lab, s, g, f in zip(self.ids, self.keys, self.paths, self.labels, self.splits(),
                                                       self.groups, self.fingerprints, strict=True)]
            return tuple(with_dicts(ManifestRow, values))


def with_dicts(cls: type, values: list[dict[str, Any]]) -> list[Any]:
    """One ``cls`` per dict of ``values``, that dict as its ``__dict__`` (no __init__ runs: for records whose
    values are known good, a whole column at a time)."""
    made = list(map(object.__new__, repeat(cls, len(values))))
    set_attr = object.__setattr__  # a frozen dataclass refuses its own __setattr__
    for record, attrs in zip(made, values, strict=True):
        set_attr(record, "__dict__", attrs)
    return made


def read_columns(root: zarr.Group) -> ManifestColumns:
    """The store's manifest, one read per array (about 0.9 s at 650,000 videos on 2 shared cores)."""
    group = root[MANIFEST_GROUP]
    assert isinstance(group, zarr.Group)
    split_names = [str(name) for name in cast(list, group.attrs.get("split_names", []))]
    col = {name: _column(group, name) for name in group.array_keys()}
    ends = col["label_end"]
    flat = col["labels"].tolist()
    with paused_gc():  # hundreds of thousands of label tuples
        if len(flat) == len(ends):  # one label a video (every dataset but Hollywood2): (label,) tuples in one pass
            labels = list(zip(flat))
        else:
            labels = [tuple(flat[a:b]) for a, b in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)]
    split_maps, split_of = _distinct_splits(col["splits"], split_names)
    return ManifestColumns(
        ids=col["id"].tolist(), keys=col["key"].tolist(), paths=col["path"].tolist(), labels=labels,
        groups=_optional(col["group"], col["group_set"]),
        fingerprints=_optional(col["fingerprint"], col["fingerprint_set"]),
        split_maps=split_maps, split_of=split_of)


def _optional(values: np.ndarray, present: np.ndarray) -> list[str | None]:
    """A string column with None where ``present`` is False."""
    if not present.any():
        return [None] * len(values)
    if present.all():
        return values.tolist()
    return [v if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]


def _distinct_splits(codes: np.ndarray, split_names: list[str]) -> tuple[tuple[dict[str, str], ...], list[int]]:
    """The distinct split mappings of the (videos, splits) role codes, and each video's place among them."""
    if codes.shape[1] == 0:
        return ({},), [0] * len(codes)
    as_one = np.ascontiguousarray(codes).view(np.dtype((np.void, codes.shape[1]))).reshape(-1)  # a row: one value
    _, first, of = np.unique(as_one, return_index=True, return_inverse=True)  # a few combinations of roles at most
    maps = tuple({name: SPLIT_ROLES[c] for name, c in zip(split_names, combo, strict=True) if c >= 0}
                 for combo in codes[first].tolist())
    return maps, of.reshape(-1).tolist()
