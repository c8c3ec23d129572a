"""Finding stores and describing them: what ``python -m glimpse.store ls`` and ``python -m glimpse.store info`` print.

Reads only (through :func:`store.open_store`) and imports neither torch nor h5py, so listing a
folder of stores is fast.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.store.claims import CLAIMS_DIR
from glimpse.store.index import INDEX_DIR, INDEX_STATUSES, IndexState
from glimpse.store.layout import ROOT_ATTR, VIDEOS_GROUP
from glimpse.store.manifest import MANIFEST_GROUP
from glimpse.store.reader import Store, StoreError, open_store
from glimpse.store.remote import is_url, join, remote_errors, url_fs
from glimpse.store.schema import DONE, FAILED, PENDING, UNREADABLE, VideoEntry

#: The environment variable every command that finds stores by dataset reads (default: stores/).
STORE_ROOT_ENV = "STORE_ROOT"


def default_root() -> str:
    """Where commands look for stores when no root is given: $STORE_ROOT, else stores/."""
    return os.environ.get(STORE_ROOT_ENV) or "stores/"


def find_stores(root: str | Path) -> list[str]:
    """Every store under ``root`` (a local folder or an fsspec URL; ``root`` itself included), sorted by path.

    A store is a folder whose ``zarr.json`` is a Zarr group with a ``glimpse`` attribute; a
    ``zarr.json`` that is not valid JSON counts too, so that the listing can show its error.
    Nothing inside a store's own ``videos/`` folder is searched.
    """
    location = str(root)
    missing = f"{location}: no such directory to list stores in (give another root, or set ${STORE_ROOT_ENV})"
    found = []
    with contextlib.ExitStack() as stack:
        if is_url(location):
            fs, inner = url_fs(location)
            stack.enter_context(remote_errors(location))
            if not fs.isdir(inner):
                raise StoreError(missing)
            walk = ((fs.unstrip_protocol(d), dirs, files) for d, dirs, files in fs.walk(inner, on_error="raise"))
            read = fs.cat_file
        else:
            if not Path(location).is_dir():
                raise StoreError(missing)
            walk = ((str(Path(d)), dirs, files) for d, dirs, files in os.walk(location))
            read = _read_local
        for dirpath, dirnames, filenames in walk:  # dirnames pruned in place: the walk skips what is removed
            dirnames.sort()
            if "zarr.json" in filenames and _is_store_metadata(read, join(dirpath, "zarr.json")):
                found.append(dirpath)
                for inside in (VIDEOS_GROUP, MANIFEST_GROUP, INDEX_DIR):  # a store's own folders: never listed
                    if inside in dirnames:
                        dirnames.remove(inside)
    return found


def is_store(path: str | Path) -> bool:
    """Whether ``path`` holds a glimpse store (a local folder; its metadata is not validated here)."""
    metadata = Path(path) / "zarr.json"
    return metadata.is_file() and _is_store_metadata(_read_local, str(metadata))


def _read_local(path: str) -> bytes:
    return Path(path).read_bytes()


def _is_store_metadata(read: Callable[[Any], bytes], path: str) -> bool:
    try:
        meta = json.loads(read(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # a broken root is listed with its error, not silently skipped
    return isinstance(meta, dict) and meta.get("node_type") == "group" and ROOT_ATTR in meta.get("attributes", {})


def sampling_text(config: dict[str, Any]) -> str:
    """The frame sampling of an extraction config: ``frames N``, ``fps F`` or ``all``, and ``max M``."""
    if config.get("frames"):
        text = f"frames {config['frames']}"
    elif config.get("fps"):
        text = f"fps {config['fps']:g}"
    else:
        text = "all"
    return f"{text}, max {config['max_frames']}" if config.get("max_frames") else text


def disk_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (a local folder or an fsspec URL)."""
    location = str(path)
    if is_url(location):
        fs, inner = url_fs(location)
        with remote_errors(location):
            return int(fs.du(inner, total=True))
    total = 0
    for dirpath, _dirs, filenames in os.walk(location):
        for name in filenames:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def store_disk_bytes(store: Store, state: IndexState) -> int:
    """Bytes of a store's files: its videos' as the index recorded them, plus everything outside ``videos/`` (no
    video folder is listed or walked)."""
    location = store.path
    total = int(state.nbytes.sum())
    if is_url(location):
        fs, inner = url_fs(location, store.storage_options)
        with remote_errors(location):
            for info in fs.ls(inner, detail=True):
                name = info["name"].rstrip("/").rsplit("/", 1)[-1]
                if name not in (VIDEOS_GROUP, CLAIMS_DIR):  # claim files are empty, one per video
                    total += int(fs.du(info["name"], total=True)) if info["type"] == "directory" else int(info["size"])
            with contextlib.suppress(FileNotFoundError):  # the videos group's own metadata
                total += int(fs.info(f"{inner.rstrip('/')}/{VIDEOS_GROUP}/zarr.json")["size"])
        return total
    for item in os.scandir(location):
        if item.name == CLAIMS_DIR:  # claim files are empty unless held, one per video: not walked
            continue
        if item.name == VIDEOS_GROUP:
            with contextlib.suppress(OSError):  # the videos group's own metadata
                total += os.stat(os.path.join(item.path, "zarr.json")).st_size
            continue
        with contextlib.suppress(OSError):
            total += disk_bytes(item.path) if item.is_dir(follow_symlinks=False) else item.stat().st_size
    return total


def _raw_bytes_indexed(store: Store, state: IndexState) -> int:
    """:func:`raw_bytes` from the index where every stream declares its frame shape (no video read); streams that
    do not (raw flow) read each done video's array metadata."""
    done = state.status == INDEX_STATUSES.index(DONE)
    frames = int(state.n_frames[done].sum())
    total, undeclared = 0, {}
    for name, desc in store.stream_info.items():
        if desc.frame_shape:
            total += 2 * frames * int(np.prod(desc.frame_shape))
        else:
            undeclared[name] = desc
    if undeclared:
        total += raw_bytes(store, [e for e in store.videos if e.status == DONE], undeclared)
    return total


def stored_shape(store: Store, entry: VideoEntry, stream: str) -> tuple[int, ...] | None:
    """The shape of one video's stream as its array metadata says, or None when it cannot be read."""
    try:
        return tuple(store.stream(entry.id, stream).shape)
    except Exception:
        return None


def raw_bytes(store: Store, entries: list[VideoEntry], streams: dict[str, Any] | None = None) -> int:
    """Uncompressed float16 bytes of every done video's ``streams`` (default: all; declared frame shapes, else array
    metadata)."""
    total = 0
    for name, desc in (streams or store.stream_info).items():
        declared = desc.frame_shape
        for entry in entries:
            if entry.status != DONE:
                continue
            shape = (entry.n_frames, *declared) if declared else stored_shape(store, entry, name)
            total += 2 * int(np.prod(shape)) if shape else 0
    return total


def store_summary(path: str | Path) -> dict[str, Any]:
    """One row of ``ls``: what a store holds, how it was made, how big it is."""
    store = open_store(path)
    state = store.index()  # a few arrays: no video's metadata is read
    status = Counter(state.statuses())
    config, meta = store.config, store.head
    raw, disk = _raw_bytes_indexed(store, state), store_disk_bytes(store, state)
    return {
        "path": str(path),
        "dataset": store.dataset,
        "backbone": meta.backbone or config.get("backbone"),
        "layer": meta.layer,
        "sampling": sampling_text(config),
        "flow": _flow_method(store),
        "weights": meta.weights or config.get("weights"),
        "streams": sorted(store.streams),
        "done": status[DONE],
        "failed": status[FAILED] + status[UNREADABLE],
        "total": len(state.status),
        "disk_bytes": disk,
        "raw_bytes": raw,
        "compression": raw / disk if disk else None,
        "created": meta.created,
        "created_by": meta.created_by,
        "config_hash": store.config_hash,
    }


def _flow_method(store: Store) -> str:
    """The flow method of the flow the store holds ("none" when it holds no flow stream, e.g. an import)."""
    if "flow" not in store.streams and "flow_cnn" not in store.streams:
        return "none"
    flow = store.stream_info.get("flow")
    return str((flow.method if flow else None) or store.config.get("flow") or "unknown")


def list_stores(root: str | Path) -> list[dict[str, Any]]:
    """``ls`` of every store under ``root``; a store that fails to open is a row with its ``error``."""
    rows = []
    for path in find_stores(root):
        try:
            rows.append(store_summary(path))
        except Exception as exc:  # listed with the error, never a crash of the whole listing
            rows.append({"path": str(path), "error": f"{type(exc).__name__}: {exc}"})
    return rows


def matching_stores(root: str | Path, dataset: str, backbone: str | None = None) -> list[Store]:
    """Stores under ``root`` of ``dataset`` (and ``backbone``), newest first: what ``train --dataset`` picks from."""
    found = []
    for path in find_stores(root):
        try:
            store = open_store(path)
        except StoreError:
            continue
        if store.dataset == dataset and backbone in (None, store.metadata.backbone):
            found.append(store)
    return sorted(found, key=lambda s: s.metadata.created or "", reverse=True)


def resolve_store(root: str | Path, dataset: str, backbone: str | None = None) -> Store:
    """The one store of ``dataset`` under ``root``; a clear error naming the candidates when none or several match."""
    found = matching_stores(root, dataset, backbone)
    if len(found) == 1:
        return found[0]
    if not found:
        have = sorted({row.get("dataset", "?") for row in list_stores(root) if "error" not in row})
        raise StoreError(f"no store of dataset {dataset!r} under {root} (stores there: {have or 'none'}); "
                         f"extract one with: make extract DATASET={dataset}")
    listing = "\n".join(f"  {s.path}  ({s.metadata.backbone}, {sampling_text(s.config)}, created "
                        f"{s.metadata.created})" for s in found)
    raise StoreError(f"{len(found)} stores of dataset {dataset!r} under {root}; choose one with --store:\n{listing}")


def human_bytes(n: int) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell (columns in ``right`` right-aligned), two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


LS_HEADER = ["store", "dataset", "backbone/layer", "sampling", "flow", "weights", "done", "failed", "total",
             "size", "ratio", "created", "by"]


def format_listing(rows: list[dict[str, Any]], root: str | Path) -> str:
    """The ``ls`` table: one aligned line per store, then one line per store that failed to open."""
    table, broken = [], []
    for row in rows:
        name = _relative(row["path"], root)
        if "error" in row:
            broken.append(f"{name}: ERROR {row['error']}")
            continue
        weights = str(row["weights"])
        table.append([
            name, row["dataset"], f"{row['backbone']}/{row['layer']}", row["sampling"], row["flow"],
            weights if len(weights) <= 20 else weights[:19] + "…",
            str(row["done"]), str(row["failed"]), str(row["total"]), human_bytes(row["disk_bytes"]),
            "-" if row["compression"] is None else f"{row['compression']:.2f}",
            str(row["created"] or "-").replace("T", " ")[:16], str(row["created_by"] or "-"),
        ])
    if not rows:
        return f"no stores under {root}"
    parts = [format_table(LS_HEADER, table, right=frozenset({6, 7, 8, 9, 10}))] if table else []
    return "\n".join(parts + broken)


def _relative(path: str, root: str | Path) -> str:
    if is_url(path):
        inside = path.removeprefix(str(root).rstrip("/") + "/")
        return path if inside == path else inside
    try:
        return str(Path(path).relative_to(root)) if Path(path) != Path(root) else str(path)
    except ValueError:
        return str(path)


def store_info(path: str | Path) -> dict[str, Any]:
    """The full provenance of one store: config and its hash, versions, weights, streams with their
    shapes, per-split and per-class counts, the devices its done videos were computed on, every failure with its
    reason."""
    store = open_store(path)
    entries, state = store.videos_and_index()  # the index read once: the entries and the devices line
    classes = store.classes
    per_class = {name: {DONE: 0, FAILED: 0, PENDING: 0} for name in classes}
    splits: defaultdict[str, Counter] = defaultdict(Counter)  # not setdefault: a Counter made per video is 0.7 s
    for entry in entries:
        status = entry.status if entry.status in (DONE, FAILED) else (FAILED if entry.status == UNREADABLE
                                                                      else PENDING)
        for label in entry.labels:
            per_class[classes[label] if label < len(classes) else str(label)][status] += 1
        for split, role in entry.splits.items():
            splits[split][role] += 1
    streams = {}
    done = [e for e in entries if e.status == DONE]
    for name, desc in store.streams.items():
        if desc.get("frame_shape"):  # every array holds it (verify checks): no video's metadata is read
            shapes = Counter({str(list(desc["frame_shape"])): len(done)} if done else {})
        else:
            shapes = Counter(str(list(shape[1:])) if (shape := stored_shape(store, e, name)) else "unreadable"
                             for e in done)
        streams[name] = {**desc, "stored_frame_shapes": dict(shapes)}
    meta = store.head
    return {
        "path": str(path),
        "dataset": store.dataset,
        "schema_version": meta.schema_version,
        "codec": meta.codec,
        "multi_label": meta.multi_label,
        "created": meta.created,
        "created_by": meta.created_by,
        "config_hash": store.config_hash,
        "config": store.config,
        "backbone": meta.backbone,
        "layer": meta.layer,
        "weights": meta.weights,
        "versions": dict(meta.versions),
        "streams": streams,
        "videos": {"total": len(entries), **Counter(e.status for e in entries)},
        "frames": sum(e.n_frames for e in entries if e.status == DONE),
        "devices": state.device_counts(DONE),  # from the index: no video's attributes are read
        "splits": {split: dict(counts) for split, counts in sorted(splits.items())},
        "classes": per_class,
        "failures": [{"id": e.id, "status": e.status, "error": e.error} for e in entries
                     if e.status in (FAILED, UNREADABLE)],
    }


def format_info(info: dict[str, Any]) -> str:
    """``info`` as text: a header of key facts, then streams, splits, classes, failures and the config."""
    videos = info["videos"]
    rgb = info["streams"].get("rgb") or {}
    shape, clip = rgb.get("frame_shape"), rgb.get("clip")
    grid = f", grid {shape[-2]} x {shape[-1]} of {shape[0]} channels" if shape and len(shape) == 3 else ""
    steps = f", a step per clip of {clip[0]} frames every {clip[1]}" if clip else ", a step per frame"
    lines = [
        f"store        {info['path']}",
        f"dataset      {info['dataset']}: {len(info['classes'])} classes, {videos['total']} videos "
        f"({videos.get(DONE, 0)} done, {videos.get(FAILED, 0) + videos.get(UNREADABLE, 0)} failed, "
        f"{videos['total'] - videos.get(DONE, 0) - videos.get(FAILED, 0) - videos.get(UNREADABLE, 0)} pending), "
        f"{info['frames']} frames",
        f"created      {info['created'] or '-'} by {info['created_by'] or '-'}",
        f"schema       version {info['schema_version']}, {'multi' if info['multi_label'] else 'single'}-label, "
        f"chunks stored with {info['codec']}",
        f"config hash  {info['config_hash']}",
        f"backbone     {info['backbone']} / {info['layer']}{grid}{steps}",
        f"weights      {info['weights']}",
        "versions     " + ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items())),
        *(["devices      " + ", ".join(f"{d} {n}" for d, n in sorted(info["devices"].items()))]
          if len(info.get("devices", {})) > 1 else []),  # a store resumed elsewhere: its videos' devices
        "",
        "streams",
    ]
    for name, desc in info["streams"].items():
        shapes = ", ".join(f"(frames, {s[1:-1]}) x{n}" if s != "unreadable" else f"unreadable x{n}"
                           for s, n in desc["stored_frame_shapes"].items()) or "no done videos"
        extra = ", ".join(f"{k} {v}" for k, v in desc.items() if k not in ("stored_frame_shapes", "dims"))
        lines.append(f"  {name:<9} {shapes}  [{extra}]")
    lines += ["", "splits"]
    for split, counts in info["splits"].items():
        lines.append(f"  {split:<9} " + ", ".join(f"{role} {n}" for role, n in sorted(counts.items())))
    lines += ["", "classes"]
    rows = [[name, str(c[DONE]), str(c[FAILED]), str(c[PENDING])] for name, c in info["classes"].items()]
    table = format_table(["class", "done", "failed", "pending"], rows, right=frozenset({1, 2, 3}))
    lines += ["  " + line for line in table.splitlines()]
    lines += ["", f"failures ({len(info['failures'])})"]
    lines += [f"  {f['id']}: {f['error']}" for f in info["failures"]] or ["  none"]
    lines += ["", "config", json.dumps(info["config"], indent=2, sort_keys=True)]
    return "\n".join(lines)
