"""What every dataset adapter shares: the :class:`Dataset` it returns, path safety, list files, box files.

An adapter reads one official dataset layout from disk and returns a :class:`Dataset` of
:class:`store.schema.VideoRecord` s. Adapters only list and stat files, they never decode a
video: a video named by a split file but absent on disk stays in ``videos`` (extraction marks
it failed) and is named in ``missing`` and in a logged warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glimpse.errors import GlimpseError
from glimpse.store.schema import SPLIT_ROLES, VideoRecord

log = logging.getLogger(__name__)

#: file suffixes (lower case) that adapters accept as videos
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm")

WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

#: how many absent video ids the warning names before it says "..."
MISSING_SHOWN = 5


class DatasetError(GlimpseError):
    """A dataset tree does not follow its official layout; the message names the expected path and why."""


@dataclass(frozen=True)
class Dataset:
    """One dataset as read from its official layout.

    ``classes`` is the class list that ``VideoRecord.labels`` index into; ``splits`` names the
    official splits, and every record maps each of them to "train", "test" or "unused".
    ``missing`` holds the ids of videos that a split file lists but that are absent on disk.
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    videos: tuple[VideoRecord, ...]
    splits: tuple[str, ...]
    multilabel: bool = False
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ids = set()
        for video in self.videos:
            if video.id in ids:
                raise DatasetError(f"{self.name} under {self.root}: video id {video.id!r} appears twice")
            ids.add(video.id)
            if max(video.labels) >= len(self.classes):
                raise DatasetError(f"{self.name}: video {video.id!r} has labels {video.labels}, "
                                   f"but there are only {len(self.classes)} classes")
            if set(video.splits) != set(self.splits):
                raise DatasetError(f"{self.name}: video {video.id!r} has splits {sorted(video.splits)}, "
                                   f"expected exactly {list(self.splits)}")
        if not self.multilabel and any(len(video.labels) != 1 for video in self.videos):
            raise DatasetError(f"{self.name}: a single-label dataset has a video with several labels")
        unknown = set(self.missing) - ids
        if unknown:
            raise DatasetError(f"{self.name}: missing ids {sorted(unknown)[:MISSING_SHOWN]} are not videos")

    def split(self, name: str, role: str) -> list[VideoRecord]:
        """The videos whose role in split ``name`` is ``role`` ("train", "test" or "unused"), in dataset order."""
        if name not in self.splits:
            raise DatasetError(f"{self.name} has no split {name!r}; its splits are {list(self.splits)}")
        if role not in SPLIT_ROLES:
            raise DatasetError(f"split role must be one of {SPLIT_ROLES}, got {role!r}")
        return [video for video in self.videos if video.splits[name] == role]


def resolve_inside(root: Path, relative: str, source: Path, line: int | None = None) -> Path:
    """Join ``relative`` (a path read from the list file ``source``) onto ``root`` and return it normalized.

    Absolute paths and ``..`` escapes out of ``root`` raise :class:`DatasetError` naming ``source``
    (and its 1-based ``line`` when given) and the offending text. The check is lexical, so a
    symlink inside ``root`` that points elsewhere (a dataset spread over disks) is allowed.
    """
    where = f"{source}, line {line}" if line is not None else f"{source}"
    text = relative.strip()
    if not text:
        raise DatasetError(f"{where}: empty path where a video path relative to {root} was expected")
    if text.startswith(("/", "\\")) or WINDOWS_DRIVE.match(text):
        raise DatasetError(f"{where}: {relative!r} is an absolute path; list files must name paths inside {root}")
    base = os.path.abspath(root)
    target = os.path.normpath(os.path.join(base, text))
    if not target.startswith(base.rstrip(os.sep) + os.sep):
        raise DatasetError(f"{where}: {relative!r} leaves {root}; list files must name paths inside it")
    return Path(target)


def open_root(root: str | Path, name: str) -> Path:
    """The absolute, normalized dataset root; raises DatasetError when it is not an existing folder."""
    return require_dir(Path(os.path.abspath(os.path.expanduser(root))), f"the {name} dataset root")


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise DatasetError saying ``what`` was expected there."""
    if not path.is_dir():
        reason = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"expected {what} at {path}, but it {reason}")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise DatasetError saying ``what`` was expected there."""
    if not path.is_file():
        reason = "is not a file" if path.exists() else "does not exist"
        raise DatasetError(f"expected {what} at {path}, but it {reason}")
    return path


def read_lines(path: Path, what: str = "a split file") -> list[tuple[int, str]]:
    """The non-blank lines of a text list file as (1-based line number, stripped text); CRLF and a BOM are fine."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: expected UTF-8 text ({err})") from None
    return [(number, line.strip()) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def video_id(path: Path, videos_dir: Path) -> str:
    """A record id: ``path`` relative to ``videos_dir``, posix, without its extension."""
    path, base = str(path), str(videos_dir).rstrip(os.sep) + os.sep
    relative = path[len(base):] if path.startswith(base) else os.path.relpath(path, videos_dir)
    return os.path.splitext(relative)[0].replace(os.sep, "/")


def video_files(folder: Path) -> list[Path]:
    """The video files directly inside ``folder`` (by suffix), sorted by name; hidden files are skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".") and p.is_file())


def subfolders(folder: Path) -> list[Path]:
    """The non-hidden folders directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def make_dataset(name: str, root: Path, classes: Iterable[str], videos: Iterable[VideoRecord],
                 splits: Iterable[str], multilabel: bool = False) -> Dataset:
    """Build the :class:`Dataset` (videos sorted by id), find listed-but-absent videos and warn about them."""
    videos = tuple(sorted(videos, key=lambda video: video.id))
    missing = tuple(video.id for video in videos if not os.path.isfile(video.path))
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        log.warning("%s: %d of %d listed videos are absent under %s (extraction will mark them failed): %s",
                    name, len(missing), len(videos), root, shown)
    return Dataset(name=name, root=root, classes=tuple(classes), videos=videos, splits=tuple(splits),
                   multilabel=multilabel, missing=missing)


# --------------------------------------------------------------------------- ground-truth boxes

GT_FRAME = re.compile(r"(\d+)(?:\.(?:tif|tiff|jpg|jpeg|png))?\.txt$", re.IGNORECASE)
JPG_FRAME = re.compile(r"(\d+)\.jpe?g$", re.IGNORECASE)


def read_boxes(path: str | Path) -> np.ndarray:
    """Per-frame boxes (n_frames, 4) float32 ``[x0, y0, x1, y1]`` in source-frame pixels, NaN rows where none.

    ``path`` is either a synthetic box file (JSON ``{"width", "height", "fps", "boxes": [[x0, y0, x1,
    y1] or null, ...]}``, one entry per source frame) or a UCF Sports ``gt/`` folder (one text file
    per frame named ``<anything>_<frame>.tif.txt`` / ``.jpg.txt`` / ``.txt``, lines "x y w h"; several
    lines give their enclosing box). UCF Sports frame numbers count from 1, or from the lowest
    number among the ``.jpg`` frames beside ``gt/`` where the video folder has them.
    """
    path = Path(path)
    if path.is_dir():
        return _read_gt_folder(path)
    if path.is_file():
        return _read_box_json(path)
    raise DatasetError(f"expected a box file or a gt/ folder at {path}, but it does not exist")


def _read_box_json(path: Path) -> np.ndarray:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: expected a JSON box file ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("boxes"), list):
        raise DatasetError(f"{path}: expected a JSON object with a 'boxes' list")
    boxes = np.full((len(meta["boxes"]), 4), np.nan, dtype=np.float32)  # (T, 4)
    for frame, box in enumerate(meta["boxes"]):
        if box is None:
            continue
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise DatasetError(f"{path}: box of frame {frame} must be [x0, y0, x1, y1] or null, got {box!r}")
        boxes[frame] = box
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bad.size:
        raise DatasetError(f"{path}: box of frame {int(bad[0])} has x1 < x0 or y1 < y0: {boxes[bad[0]].tolist()}")
    return boxes


def _read_gt_folder(folder: Path) -> np.ndarray:
    jpg_frames = [int(m.group(1)) for p in folder.parent.iterdir() if (m := JPG_FRAME.search(p.name))]
    first = min(jpg_frames, default=1)
    rows: dict[int, list[float]] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(".txt")):
        match = GT_FRAME.search(file.name)
        if match is None:
            raise DatasetError(f"{file}: expected a gt file named <anything>_<frame number>.tif.txt")
        row = int(match.group(1)) - first
        if row < 0:
            raise DatasetError(f"{file}: frame {match.group(1)} is before the first frame {first}")
        rows[row] = _read_gt_file(file)
    boxes = np.full((max(rows, default=-1) + 1, 4), np.nan, dtype=np.float32)  # (T, 4)
    for row, box in rows.items():
        boxes[row] = box
    return boxes


def _read_gt_file(file: Path) -> list[float]:
    corners = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            x, y, w, h = (float(v) for v in line.split()[:4])
        except ValueError:
            raise DatasetError(f"{file}, line {number}: expected 'x y w h', got {line.strip()!r}") from None
        corners.append((x, y, x + w, y + h))
    if not corners:
        return [math.nan] * 4
    x0, y0, x1, y1 = zip(*corners, strict=True)
    return [min(x0), min(y0), max(x1), max(y1)]
