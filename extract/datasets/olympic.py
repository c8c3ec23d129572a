"""Olympic Sports (Niebles, Chen and Fei-Fei 2010): about 800 YouTube clips of 16 sports, one official split.

Official layout::

    root/<class>/<id>.seq        videos (Norpix .seq as distributed; see below)
    root/train/<class>.txt       one video id per line, no extension
    root/test/<class>.txt

for the 16 classes basketball_layup, bowling, clean_and_jerk, discus_throw, diving_platform_10m,
diving_springboard_3m, hammer_throw, high_jump, javelin_throw, long_jump, pole_vault, shot_put,
snatch, tennis_serve, triple_jump, vault. Classes are the sorted names of the list files.

The videos are distributed as Norpix ``.seq`` files, which PyAV (ffmpeg) cannot read: convert
them first (e.g. with a Norpix .seq reader writing frames, then ffmpeg) to ``<id>.avi``,
``.mp4`` or ``.mkv`` beside them. A listed video present only as ``.seq`` raises DatasetError
listing those files. A listed video with no file at all stays a record with the ``.avi`` path
and is reported missing. There is one split "1".
"""

from __future__ import annotations

from pathlib import Path

from glimpse.extract.datasets.base import (
    VIDEO_SUFFIXES,
    Dataset,
    DatasetError,
    make_dataset,
    open_root,
    read_lines,
    require_dir,
    resolve_inside,
    video_id,
)
from glimpse.store.schema import TEST, TRAIN, VideoRecord

SUFFIXES = (".avi", ".mp4", ".mkv")
SEQ_SHOWN = 10


def find_video(base: Path) -> Path | None:
    """The readable video for the extension-less ``base`` path (``base`` itself if it has a video suffix)."""
    if base.suffix.lower() in VIDEO_SUFFIXES and base.is_file():
        return base
    return next((path for suffix in SUFFIXES if (path := Path(f"{base}{suffix}")).is_file()), None)


def load(root: str | Path) -> Dataset:
    """Read Olympic Sports from ``root`` (see the module docstring); both lists of every class are required."""
    root = open_root(root, "olympic")
    lists = {role: require_dir(root / role, f"the {role} list folder") for role in (TRAIN, TEST)}
    classes = tuple(sorted({p.stem for folder in lists.values() for p in folder.glob("*.txt")}))
    if not classes:
        raise DatasetError(f"expected <class>.txt lists in {lists[TRAIN]} and {lists[TEST]}, found none")
    records, seq_only = {}, []
    for label, name in enumerate(classes):
        videos = require_dir(resolve_inside(root, name, lists[TRAIN] / f"{name}.txt"), f"the video folder of {name!r}")
        for role, folder in lists.items():
            file = folder / f"{name}.txt"
            for number, line in read_lines(file, f"the {role} list of {name!r}"):
                base = resolve_inside(videos, line, file, number)
                path = find_video(base)
                if path is None and Path(f"{base}.seq").is_file():
                    seq_only.append(f"{base}.seq")
                path = path or Path(f"{base}.avi")
                vid = video_id(path, root)
                if vid in records and records[vid].splits["1"] != role:
                    raise DatasetError(f"{file}, line {number}: video {line!r} is in both the train and test lists")
                records[vid] = VideoRecord(id=vid, path=str(path), labels=(label,), splits={"1": role})
    if seq_only:
        shown = "\n  ".join(seq_only[:SEQ_SHOWN]) + ("\n  ..." if len(seq_only) > SEQ_SHOWN else "")
        raise DatasetError(f"{root}: {len(seq_only)} listed videos exist only as Norpix .seq files, which PyAV cannot "
                           f"read; convert them to .avi/.mp4/.mkv beside the .seq first:\n  {shown}")
    return make_dataset("olympic", root, classes, records.values(), ("1",))
