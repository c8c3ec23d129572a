"""Checking a store's data against its own metadata: ``python -m glimpse.store verify PATH``.

Every video marked done is read back in full. For each stream the store declares, its array must
exist, be float16 with 4 dimensions and the per-frame shape the root attributes declare (where they
declare one), hold as many frames as the video's ``n_frames``, ``frame_indices`` and ``timestamps``,
decode without error, contain no NaN or Inf, and hash to the sha256 recorded at write time. A zstd
chunk with a flipped byte either fails to decode or decodes to other values; the first is caught by
the decode, the second by the checksum. Failed and pending videos hold no data and are only counted. The index
(store/index.py) must agree with every video's attributes: a video it calls done or failed is that, with the same
frame count, and the other way round (``store reindex`` rebuilds it from the attributes).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from glimpse.files import fingerprint
from glimpse.store.layout import array_checksum
from glimpse.store.reader import Store, open_store
from glimpse.store.schema import DONE, FAILED, UNREADABLE, StreamInfo, VideoEntry
from glimpse.store.video_files import opened_video, video_name


@dataclass(frozen=True)
class Verification:
    """What verify found: ``bad`` holds (video id, reasons) of every done video that failed a check."""

    path: str
    streams: tuple[str, ...]
    checked: int
    not_done: Mapping[str, int]  # status -> count of videos that hold no data to check
    bad: tuple[tuple[str, str], ...]

    @property
    def ok(self) -> bool:
        return not self.bad

    def report(self) -> str:
        """A one-line OK summary, or one line per bad video with its reasons."""
        others = ", ".join(f"{n} {status}" for status, n in sorted(self.not_done.items()))
        if self.ok:
            rest = f"not checked (no data): {others}" if others else "every video is done"
            return f"OK {self.path}: {self.checked} done videos verified ({', '.join(self.streams)}); {rest}"
        lines = [f"BAD {self.path}: {len(self.bad)} of {self.checked} videos checked failed verification"]
        lines += [f"  {video_id}: {reason}" for video_id, reason in self.bad]
        return "\n".join(lines)


def stream_array(video: zarr.Group, key: str, name: str, desc: StreamInfo | Mapping[str, Any],
                 n_frames: int) -> tuple[zarr.Array | None, list[str]]:
    """Stream ``name`` of video ``key`` whose group (its file, store.video_files) is ``video``, and why its metadata
    does not fit the store (no chunk is read).

    The array must exist and be float16 (frames, ...) with the per-frame shape the store declares (where it
    declares one) and ``n_frames`` frames. Returns (None, reasons) for a bad array.
    """
    where = f"{video_name(key)}/{name}"
    try:
        array = video[name]
    except KeyError:
        return None, [f"{where}: array missing"]
    except Exception as exc:
        return None, [f"{where}: array metadata unreadable ({type(exc).__name__}: {exc})"]
    if not isinstance(array, zarr.Array):
        return None, [f"{where}: is a group, not an array"]
    problems = []
    if array.dtype != np.float16:
        problems.append(f"{where}: dtype {array.dtype}, expected float16")
    if array.ndim != 4:
        problems.append(f"{where}: shape {array.shape} has {array.ndim} dimensions, expected 4")
    declared = desc.frame_shape if isinstance(desc, StreamInfo) else desc.get("frame_shape")
    if declared is not None and tuple(array.shape[1:]) != tuple(declared):
        problems.append(f"{where}: per-frame shape {tuple(array.shape[1:])} but the store declares {tuple(declared)}")
    stored = array.shape[0] if array.ndim else 0
    if stored != n_frames:
        problems.append(f"{where}: {stored} frames stored but n_frames is {n_frames}")
    return (None if problems else array), problems


def check_stream(video: zarr.Group, name: str, desc: StreamInfo | Mapping[str, Any], entry: VideoEntry) -> list[str]:
    """Reasons why stream ``name`` of a done video whose group is ``video`` is bad (empty when it is good)."""
    array, problems = stream_array(video, entry.key, name, desc, entry.n_frames)
    if array is None:
        return problems  # reading an array whose shape is wrong proves nothing more
    where = f"{video_name(entry.key)}/{name}"
    try:
        data = array[...]  # (frames, ...)
    except Exception as exc:
        return [f"{where}: chunk data does not decode ({type(exc).__name__}: {exc})"]
    if not np.isfinite(data).all():
        problems.append(f"{where}: {int(data.size - np.isfinite(data).sum())} values are NaN or Inf")
    recorded = entry.checksums.get(name)
    if recorded is None:
        problems.append(f"{where}: no checksum recorded at write time")
    elif array_checksum(data) != recorded:
        problems.append(f"{where}: sha256 differs from the one recorded at write time (data changed after "
                        "writing, or chunks are missing)")
    return problems


def check_video(store: Store, entry: VideoEntry) -> list[str]:
    """Reasons why a done video is bad (empty when it is good)."""
    counts = {"n_frames": entry.n_frames, "frame_indices": len(entry.frame_indices),
              "timestamps": len(entry.timestamps)}
    if entry.flow_pairs is not None:
        counts["flow_pairs"] = len(entry.flow_pairs)
    problems = []
    if len(set(counts.values())) != 1:
        problems.append("frame counts disagree: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    try:
        with opened_video(store.path, entry.key, store.storage_options) as video:
            for name, desc in store.stream_info.items():
                problems += check_stream(video, name, desc, entry)
    except FileNotFoundError:
        problems.append(f"{video_name(entry.key)}: video file missing")
    except Exception as exc:
        problems.append(f"{video_name(entry.key)}: does not open ({type(exc).__name__}: {exc})")
    return problems


def changed_sources(store: Store, root: str | None = None) -> list[tuple[str, str]]:
    """(video id, why) of every video whose source file is no longer the one extracted: missing, unreadable, or of
    another fingerprint (:func:`glimpse.files.fingerprint`). ``root`` stands for the dataset root the store recorded
    (a dataset copied elsewhere). Videos extracted before fingerprints were recorded are not checked."""
    recorded = store.metadata.source.get("root")
    changed = []
    for entry in store.videos:
        if entry.fingerprint is None:
            continue
        path = entry.path
        if root and recorded and Path(path).is_relative_to(recorded):
            path = str(Path(root) / Path(path).relative_to(recorded))
        now = fingerprint(path)
        if now is None:
            changed.append((entry.id, f"source file {path} is missing or unreadable"))
        elif now != entry.fingerprint:
            changed.append((entry.id, f"source file {path} changed since extraction (fingerprint {now}, extracted "
                                      f"from {entry.fingerprint})"))
    return changed


def run_verify(path: str | Path, progress: bool = False, storage_options: Mapping[str, Any] | None = None,
               sources: bool = False, root: str | None = None) -> Verification:
    """Verify every done video of the store at ``path`` (a tqdm bar when ``progress`` and stderr is a terminal);
    with ``sources``, also that each video's source file is still the one extracted (:func:`changed_sources`)."""
    store = open_store(path, storage_options)
    entries = store.videos
    bad: list[tuple[str, str]] = []
    not_done: Counter = Counter()
    from tqdm import tqdm

    bar = tqdm(total=len(entries), unit="video", desc="verify", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    checked = 0
    for indexed in entries:
        entry = store.video(indexed.id)  # the video's attributes: the source of truth
        disagree = index_disagreement(indexed, entry)
        if disagree:
            bad.append((entry.id, f"{disagree}; rebuild the index with 'python -m glimpse.store reindex {path}'"))
        if entry.status == UNREADABLE:
            checked += 1
            bad.append((entry.id, entry.error or "video metadata unreadable"))
        elif entry.status != DONE:
            not_done[entry.status] += 1
        else:
            checked += 1
            problems = check_video(store, entry)
            if problems:
                bad.append((entry.id, "; ".join(problems)))
        bar.set_postfix(bad=len(bad))
        bar.update(1)
    bar.close()
    if sources:
        bad += changed_sources(store, root)
    return Verification(str(path), tuple(store.streams), checked, dict(not_done), tuple(bad))


def index_disagreement(indexed: VideoEntry, entry: VideoEntry) -> str | None:
    """Why the index's view of a video (``indexed``) disagrees with its attributes (``entry``); None when it agrees:
    done and failed match both ways, and a done video has the same frame count."""
    final = (DONE, FAILED, UNREADABLE)
    if (indexed.status in final or entry.status in final) and indexed.status != entry.status:
        if {indexed.status, entry.status} == {FAILED, UNREADABLE}:
            return None
        return f"the index says {indexed.status}, the video's attributes say {entry.status}"
    if entry.status == DONE and indexed.n_frames != entry.n_frames:
        return f"the index says {indexed.n_frames} frames, the video's attributes say {entry.n_frames}"
    return None


def verify_store(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """(video id, reasons) of every done video of the store that fails a check; empty for a sound store."""
    return list(run_verify(path, storage_options=storage_options).bad)
