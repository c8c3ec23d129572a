"""HDF5 in the layout of the original soft-attention code, both ways: ``python -m glimpse.store export`` / ``import``.

Sharma et al.'s Theano code (kracwarlock/action-recognition-visual-attention, util/data_handler.py)
reads, per role, one HDF5 dataset ``features`` of shape (total frames, C*K*K) holding the frames of
all videos of that role one after another, plus three text files. ``export`` writes::

    OUT.h5                          attributes: format, frame_shape [C, K, K], classes (names, in label
                                    order), config_hash and config (JSON) of the source store, dataset,
                                    stream, split, dtype, backbone, layer, weights, multi_label (0 or 1)
    OUT.h5:/<role>/features         (total frames, C*K*K) float32 (default) or float16; videos in
                                    <role>_filename.txt order, each video's frames in time order; a row
                                    is one frame's cube flattened channel-major, ``cube.reshape(T, -1)``
                                    of (T, C, K, K): column c*K*K + y*K + x
    OUT.h5:/<role>/framenum         (videos,) int64, frames per video
    OUT.h5:/<role>/filename         (videos,) UTF-8 strings, the video ids
    OUT.h5:/<role>/labels           (videos,) int64 class indices; for a multi-label dataset
                                    (videos, classes) uint8, one multi-hot row per video
    OUT.h5:/<role>/frame_indices    (total frames,) int64, source frame number of every row
    OUT.h5:/<role>/timestamps       (total frames,) float64, its presentation time in seconds
    <OUT dir>/<role>_framenum.txt   frames per video, one per line
    <OUT dir>/<role>_filename.txt   video ids, one per line
    <OUT dir>/<role>_labels.txt     0-based class index per line; for a multi-label dataset the
                                    original's comma-separated multi-hot row (``0,0,1,0,...``)

``<role>`` is ``train`` and ``test`` of the chosen official split (``unused`` videos and videos not
done are left out). The original code takes ``data_file=OUT.h5``, ``dataset_name="train/features"``
and the text files as they are; its ``reshape(..., K*K, C, order="F")`` then yields (location,
channel) rows with location y*K + x. Side files of two exports into one folder overwrite each other.

``import`` brings such a file back into a new store: (C, K, K), classes and the source config from
the attributes; ids, labels and frame counts from the text files beside the file (or, where they
are absent, from the datasets of the same name inside it); frame indices and timestamps from the
datasets where present, else 0..n-1 and unknown (null). Every video is done. A ``valid`` role (the
original's validation set) becomes role ``unused`` of the split, since stores know only train/test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glimpse.store.layout import EXPORT_DTYPES, video_key
from glimpse.store.reader import StoreError, open_store
from glimpse.store.schema import DONE, TEST, TRAIN, UNUSED, VideoRecord
from glimpse.store.writer import create_store

FORMAT = "glimpse-softattention-hdf5/1"
ROLES = ("train", "valid", "test")


def _progress(total: int, desc: str, enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=desc, dynamic_ncols=True)


def label_line(labels: Iterable[int], n_classes: int, multi_label: bool) -> str:
    """One line of ``<role>_labels.txt``: the class index, or the comma-separated multi-hot row."""
    labels = list(labels)
    if not multi_label:
        return str(labels[0])
    return ",".join("1" if c in labels else "0" for c in range(n_classes))


def parse_label_line(line: str, n_classes: int, where: str) -> tuple[int, ...]:
    """Class indices of one labels line: ``3``, ``0 2`` (indices) or ``0,1,0,1`` (multi-hot)."""
    try:
        if "," in line:
            hot = [int(x) for x in line.split(",")]
            if len(hot) != n_classes:
                raise ValueError(f"multi-hot row has {len(hot)} entries for {n_classes} classes")
            labels = tuple(i for i, h in enumerate(hot) if h)
        else:
            labels = tuple(int(x) for x in line.split())
        if not labels or not all(0 <= lab < n_classes for lab in labels):
            raise ValueError(f"labels {labels} are not class indices in [0, {n_classes})")
    except ValueError as exc:
        raise StoreError(f"{where}: bad labels line {line!r}: {exc}") from None
    return labels


def default_split(splits: Iterable[str]) -> str:
    """The split an export uses when none is given: "1" where it exists, else the first by name."""
    names = sorted(set(splits), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    if not names:
        raise StoreError("the store's videos belong to no split")
    return "1" if "1" in names else names[0]


def export_hdf5(store_path: str | Path, out: str | Path, *, stream: str = "rgb", split: str | None = None,
                dtype: str = "float32", progress: bool = False) -> dict[str, Any]:
    """Write one stream of one split of a store to ``out`` (HDF5) and its side text files (layout above).

    Returns {"split", "roles": {role: {"videos", "frames"}}, "left_out": {video id: status}}.
    """
    if dtype not in EXPORT_DTYPES:
        raise StoreError(f"--dtype {dtype!r}: choose one of {EXPORT_DTYPES}")
    store = open_store(store_path)
    if stream not in store.streams:
        raise StoreError(f"{store_path}: stream {stream!r} was not extracted (this store has {sorted(store.streams)})")
    videos = store.videos
    split = split or default_split(s for v in videos for s in v.splits)
    if not any(split in v.splits for v in videos):
        have = sorted({s for v in videos for s in v.splits})
        raise StoreError(f"{store_path}: no split {split!r} (this store has splits {have})")
    multi_label = store.multi_label
    n_classes = len(store.classes)
    left_out = {v.id: v.status for v in videos if v.splits.get(split) in (TRAIN, TEST) and v.status != DONE}
    by_role = {role: [v for v in videos if v.status == DONE and v.splits.get(split) == role] for role in (TRAIN, TEST)}
    by_role = {role: members for role, members in by_role.items() if members}
    if not by_role:
        raise StoreError(f"{store_path}: split {split!r} has no done train or test video to export")
    frame_shape = store.stream_info[stream].frame_shape
    if frame_shape is None:  # e.g. raw flow: the stored arrays must agree among themselves
        first = next(iter(by_role.values()))[0]
        frame_shape = list(store.stream(first.id, stream).shape[1:])
    width = int(np.prod(frame_shape))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = store.metadata
    summary: dict[str, Any] = {"split": split, "roles": {}, "left_out": left_out}
    bar = _progress(sum(len(m) for m in by_role.values()), "export", progress)
    with h5py.File(out, "w") as f:
        attrs = {"format": FORMAT, "frame_shape": list(frame_shape), "config_hash": store.config_hash,
                 "config": json.dumps(store.config, sort_keys=True), "dataset": store.dataset, "stream": stream,
                 "split": split, "dtype": dtype, "backbone": meta.backbone, "layer": meta.layer,
                 "weights": meta.weights, "multi_label": int(multi_label)}
        f.attrs.update({k: v for k, v in attrs.items() if v is not None})
        f.attrs["classes"] = np.array(store.classes, dtype=h5py.string_dtype())
        for role, members in by_role.items():
            total = sum(v.n_frames for v in members)
            group = f.create_group(role)
            features = group.create_dataset("features", shape=(total, width), dtype=dtype)
            start = 0
            for v in members:
                try:
                    cube = store.read(v.id, stream)  # (T, C, K, K)
                except Exception as exc:
                    raise StoreError(f"{store_path}: video {v.id!r} ({stream}) cannot be read: "
                                     f"{type(exc).__name__}: {exc}; run 'python -m glimpse.store verify'") from exc
                if cube.shape != (v.n_frames, *frame_shape):
                    expected = (v.n_frames, *frame_shape)
                    raise StoreError(f"{store_path}: video {v.id!r} ({stream}) has shape {cube.shape}, expected "
                                     f"{expected}; run 'python -m glimpse.store verify'")
                features[start : start + v.n_frames] = cube.reshape(v.n_frames, -1).astype(dtype)  # (T, C*K*K)
                start += v.n_frames
                if bar is not None:
                    bar.update(1)
            group["framenum"] = np.array([v.n_frames for v in members], dtype=np.int64)
            group["filename"] = np.array([v.id for v in members], dtype=h5py.string_dtype())
            if multi_label:
                group["labels"] = np.array([[int(c in v.labels) for c in range(n_classes)] for v in members],
                                           dtype=np.uint8)
            else:
                group["labels"] = np.array([v.label for v in members], dtype=np.int64)
            group["frame_indices"] = np.array([i for v in members for i in v.frame_indices], dtype=np.int64)
            group["timestamps"] = np.array([t for v in members for t in v.timestamps], dtype=np.float64)
            _write_lines(out.parent / f"{role}_framenum.txt", (str(v.n_frames) for v in members))
            _write_lines(out.parent / f"{role}_filename.txt", (v.id for v in members))
            _write_lines(out.parent / f"{role}_labels.txt",
                         (label_line(v.labels, n_classes, multi_label) for v in members))
            summary["roles"][role] = {"videos": len(members), "frames": total}
    if bar is not None:
        bar.close()
    return summary


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _side_or_inside(h5_path: Path, group: h5py.Group, role: str, name: str) -> tuple[list[str] | None, str]:
    """The lines of ``<role>_<name>.txt`` beside the file, else of dataset /<role>/<name>, and where they came from."""
    side = h5_path.parent / f"{role}_{name}.txt"
    if side.is_file():
        return [line.strip() for line in side.read_text().splitlines() if line.strip()], str(side)
    if name not in group:
        return None, f"{side} (or {h5_path}:/{role}/{name})"
    data = group[name][...]
    if name == "filename":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in data], f"{h5_path}:/{role}/{name}"
    if name == "labels" and data.ndim == 2:
        return [",".join(str(int(x)) for x in row) for row in data], f"{h5_path}:/{role}/{name}"
    return [str(int(x)) for x in data], f"{h5_path}:/{role}/{name}"


def _text_attr(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def import_hdf5(h5_path: str | Path, out: str | Path, *, dataset: str, stream: str | None = None,
                overwrite: bool = False, codec: str | None = None) -> dict[str, int]:
    """Build a new store at ``out`` from a file in the layout above, its chunks stored with ``codec`` (None: zstd);
    returns {role: videos imported}."""
    h5_path = Path(h5_path)
    if not h5_path.is_file():
        raise StoreError(f"{h5_path}: no such file")
    try:
        f = h5py.File(h5_path, "r")
    except OSError as exc:
        raise StoreError(f"{h5_path}: not an HDF5 file ({exc})") from None
    with f:
        for needed in ("frame_shape", "classes"):
            if needed not in f.attrs:
                raise StoreError(f"{h5_path}: no {needed!r} attribute; import needs (C, K, K) and the class names "
                                 "as 'python -m glimpse.store export' writes them")
        frame_shape = [int(x) for x in f.attrs["frame_shape"]]
        classes = [_text_attr(c) for c in f.attrs["classes"]]
        source_config = json.loads(_text_attr(f.attrs["config"])) if "config" in f.attrs else {}
        info = {k: _text_attr(f.attrs[k]) for k in ("backbone", "layer", "weights") if k in f.attrs}
        stream = stream or (_text_attr(f.attrs["stream"]) if "stream" in f.attrs else "rgb")
        split = _text_attr(f.attrs["split"]) if "split" in f.attrs else "1"
        roles = [r for r in ROLES if r in f and "features" in f[r]]
        if not roles:
            raise StoreError(f"{h5_path}: no /train/features, /valid/features or /test/features dataset")
        plan = []  # (record, role, first row, frames, frame indices, timestamps)
        for role in roles:
            plan += _plan_role(h5_path, f[role], role, split, frame_shape, len(classes))
        ids = [record.id for record, *_ in plan]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise StoreError(f"{h5_path}: video ids listed more than once: {dupes[:5]}")
        config = {**source_config, "dataset": dataset, "imported_from": h5_path.name,
                  "source_config_hash": _text_attr(f.attrs.get("config_hash", "")) or None, "stream": stream}
        desc = {"frame_shape": frame_shape, **{k: v for k, v in info.items() if k in ("backbone", "layer")}}
        multi_label = bool(f.attrs["multi_label"]) if "multi_label" in f.attrs else None  # None: from the labels
        writer = create_store(out, dataset=dataset, classes=classes, records=[p[0] for p in plan], config=config,
                              streams={stream: desc}, overwrite=overwrite, multi_label=multi_label, codec=codec,
                              info={**info, "versions": {"h5py": h5py.__version__}, "imported_from": str(h5_path)})
        counts = dict.fromkeys(roles, 0)
        for record, role, start, n, indices, timestamps in plan:
            key = video_key(record.id)
            if n == 0:
                writer.write_failure(key, f"{h5_path}: video {record.id!r} has 0 frames in /{role}/features")
                continue
            cube = f[role]["features"][start : start + n].reshape(n, *frame_shape)  # (T, C, K, K)
            result = {"n_frames": n, "frame_indices": indices, "timestamps": timestamps,
                      "source": {"imported_from": h5_path.name, "role": role}}
            writer.write_video(key, {stream: cube}, result)
            counts[role] += 1
    return counts


def _plan_role(h5_path: Path, group: h5py.Group, role: str, split: str, frame_shape: list[int],
               n_classes: int) -> list[tuple]:
    """Records and row ranges of the videos of one role, checked against each other and the features."""
    features = group["features"]
    width = int(np.prod(frame_shape))
    if features.ndim != 2 or features.shape[1] != width:
        raise StoreError(f"{h5_path}:/{role}/features has shape {features.shape}, expected (frames, {width}) "
                         f"for frame shape {tuple(frame_shape)}")
    columns = {}
    for name in ("filename", "framenum", "labels"):
        lines, where = _side_or_inside(h5_path, group, role, name)
        if lines is None:
            raise StoreError(f"{h5_path}: role {role!r} has no {name} list; expected {where}")
        columns[name] = (lines, where)
    ids, where_ids = columns["filename"]
    for name in ("framenum", "labels"):
        lines, where = columns[name]
        if len(lines) != len(ids):
            raise StoreError(f"{where}: {len(lines)} lines, but {where_ids} lists {len(ids)} videos")
    try:
        frames = [int(x) for x in columns["framenum"][0]]
    except ValueError as exc:
        raise StoreError(f"{columns['framenum'][1]}: not one frame count per line ({exc})") from None
    if sum(frames) != features.shape[0] or any(n < 0 for n in frames):
        raise StoreError(f"{columns['framenum'][1]}: frame counts sum to {sum(frames)}, but "
                         f"{h5_path}:/{role}/features has {features.shape[0]} rows")
    indices = group["frame_indices"][...].tolist() if "frame_indices" in group else None
    stamps = group["timestamps"][...].tolist() if "timestamps" in group else None
    plan, start = [], 0
    for video_id, n, line in zip(ids, frames, columns["labels"][0], strict=True):
        labels = parse_label_line(line, n_classes, columns["labels"][1])
        record = VideoRecord(id=video_id, path=video_id, labels=labels, splits={split: UNUSED if role == "valid"
                                                                                 else role})
        plan.append((record, role, start, n,
                     indices[start : start + n] if indices is not None else list(range(n)),
                     stamps[start : start + n] if stamps is not None else [None] * n))
        start += n
    return plan
