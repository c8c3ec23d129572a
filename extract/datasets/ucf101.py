"""UCF-101 (Soomro, Zamir and Shah 2012): 13,320 YouTube clips of 101 actions, 3 official splits.

Official layout, as unpacked from UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip::

    root/UCF-101/<Class>/v_<Class>_gGG_cCC.avi
    root/ucfTrainTestlist/classInd.txt      "1 ApplyEyeMakeup"                                (101 lines)
    root/ucfTrainTestlist/trainlist0k.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"   (k = 1, 2, 3)
    root/ucfTrainTestlist/testlist0k.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

The files may have CRLF line endings. Classes are in classInd order (index - 1). A video's label
comes from its folder name through classInd; a trailing label on a line must agree with it.
The official files have a quirk that is kept as is: folder ``HandstandPushups`` holds
``v_HandStandPushups_...`` files. ``group`` is ``"<Class>/gGG"`` (the 25 groups split train from
test). A video absent from both lists of a split is "unused" there.

:func:`read_ucf_layout` is the parser; the synthetic dataset reuses it with other split numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from glimpse.extract.datasets.base import (
    Dataset,
    DatasetError,
    make_dataset,
    open_root,
    read_lines,
    require_dir,
    resolve_inside,
    video_id,
)
from glimpse.store.schema import TEST, TRAIN, UNUSED, VideoRecord

VIDEOS_DIR = "UCF-101"
LISTS_DIR = "ucfTrainTestlist"
GROUP = re.compile(r"_(g\d+)_c\d+$")


def read_class_index(path: Path) -> tuple[str, ...]:
    """Class names from classInd.txt, ordered by their 1-based index (which must run 1..N)."""
    classes = []
    for number, line in read_lines(path, "the class index classInd.txt"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}, line {number}: expected '<index> <ClassName>', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise DatasetError(f"{path}, line {number}: expected index {len(classes) + 1}, got {parts[0]}")
        classes.append(parts[1])
    if not classes:
        raise DatasetError(f"{path}: expected '<index> <ClassName>' lines, the file is empty")
    return tuple(classes)


def read_ucf_layout(root: Path, required: Sequence[int], optional: Sequence[int] = (),
                    videos_dir: str = VIDEOS_DIR, lists_dir: str = LISTS_DIR,
                    ) -> tuple[tuple[str, ...], list[VideoRecord], tuple[str, ...]]:
    """Parse a UCF-101 style tree: returns (classes, records, split names).

    Splits in ``required`` must have both ``trainlist0k.txt`` and ``testlist0k.txt``; those in
    ``optional`` are read when their train list exists. Paths are checked to stay inside
    ``root/videos_dir``; videos are not opened.
    """
    videos = require_dir(root / videos_dir, "the video folder")
    lists = require_dir(root / lists_dir, "the split list folder")
    classes = read_class_index(lists / "classInd.txt")
    class_index = {name: index for index, name in enumerate(classes)}
    splits = [k for k in required] + [k for k in optional if (lists / f"trainlist{k:02d}.txt").exists()]
    paths: dict[str, Path] = {}
    labels: dict[str, int] = {}
    roles: dict[str, dict[str, str]] = {}
    parsed: dict[str, tuple[str, Path, int]] = {}  # listed path -> (id, path, label); they repeat across splits
    for k in splits:
        for role, file in ((TRAIN, lists / f"trainlist{k:02d}.txt"), (TEST, lists / f"testlist{k:02d}.txt")):
            for number, line in read_lines(file, f"the {role} list of split {k}"):
                listed, label_text = _split_list_line(line)
                if listed not in parsed:
                    parsed[listed] = _parse_path(videos, listed, file, number, class_index)
                vid, path, label = parsed[listed]
                if label_text and label_text[0] != str(label + 1):
                    raise DatasetError(f"{file}, line {number}: label {label_text[0]} disagrees with folder "
                                       f"{classes[label]!r}, which is class {label + 1} in classInd.txt")
                seen = roles.setdefault(vid, {})
                if seen.get(str(k), role) != role:
                    raise DatasetError(f"{file}, line {number}: {listed!r} is in both the train and the test list "
                                       f"of split {k}")
                seen[str(k)] = role
                paths[vid], labels[vid] = path, label
    names = tuple(str(k) for k in splits)
    records = []
    for vid, path in paths.items():
        folder, name = vid.split("/")
        match = GROUP.search(name)
        records.append(VideoRecord(
            id=vid, path=str(path), labels=(labels[vid],),
            splits={name: roles[vid].get(name, UNUSED) for name in names},
            group=f"{folder}/{match.group(1)}" if match else None,
        ))
    return classes, records, names


def _split_list_line(line: str) -> tuple[str, list[str]]:
    """'Class/v_x.avi 3' -> ('Class/v_x.avi', ['3']); file names may hold spaces, a label is the last number."""
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], [parts[1]]
    return line.strip(), []


def _parse_path(videos: Path, listed: str, file: Path, number: int,
                class_index: dict[str, int]) -> tuple[str, Path, int]:
    """(id, path, label) of a listed ``<Class>/<video>`` path; the label comes from the class folder."""
    path = resolve_inside(videos, listed, file, number)
    vid = video_id(path, videos)
    folder = vid.split("/")[0]
    if vid.count("/") != 1:
        raise DatasetError(f"{file}, line {number}: expected '<Class>/<video>', got {listed!r}")
    if folder not in class_index:
        raise DatasetError(f"{file}, line {number}: folder {folder!r} is not a class of classInd.txt")
    return vid, path, class_index[folder]


def load(root: str | Path) -> Dataset:
    """Read UCF-101 from ``root`` (see the module docstring for the layout); all three splits are required."""
    root = open_root(root, "ucf101")
    classes, records, splits = read_ucf_layout(root, required=(1, 2, 3))
    return make_dataset("ucf101", root, classes, records, splits)
