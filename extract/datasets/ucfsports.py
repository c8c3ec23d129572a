"""UCF Sports (Rodriguez, Ahmed and Shah 2008): 150 broadcast sports clips of 10 actions, with actor boxes.

Official layout, as unpacked from ucf_sports_actions.zip (the root is its ``ucf action`` folder)::

    root/<ClassFolder>/<NNN>/<video>.avi         one video per folder (if several, the first sorted)
    root/<ClassFolder>/<NNN>/gt/<any>_<frame>.tif.txt   optional per-frame boxes, lines "x y w h"

The 13 class folders map to 10 classes: Diving-Side -> Diving; Golf-Swing-Back, -Front, -Side ->
Golf-Swing; Kicking-Front, -Side -> Kicking; Lifting; Riding-Horse; Run-Side -> Run;
SkateBoarding-Front -> SkateBoarding; Swing-Bench; Swing-SideAngle (high bar); Walk-Front -> Walk.
Classes are the sorted names. ``boxes`` is the ``gt`` folder (see :func:`base.read_boxes`).
A folder without a video stays a record (id ``<ClassFolder>/<NNN>``, path the folder) and is
reported missing.

There is no official split file: split "1" is a seeded random 75/25 train/test split stratified
per class (round(n / 4) test videos of a class of n), drawn from a numpy Generator seeded with
``(seed, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glimpse.extract.datasets.base import (
    Dataset,
    make_dataset,
    open_root,
    require_dir,
    subfolders,
    video_files,
    video_id,
)
from glimpse.store.schema import TEST, TRAIN, VideoRecord

FOLDER_CLASSES = {
    "Diving-Side": "Diving", "Golf-Swing-Back": "Golf-Swing", "Golf-Swing-Front": "Golf-Swing",
    "Golf-Swing-Side": "Golf-Swing", "Kicking-Front": "Kicking", "Kicking-Side": "Kicking", "Lifting": "Lifting",
    "Riding-Horse": "Riding-Horse", "Run-Side": "Run", "SkateBoarding-Front": "SkateBoarding",
    "Swing-Bench": "Swing-Bench", "Swing-SideAngle": "Swing-SideAngle", "Walk-Front": "Walk",
}
CLASSES = tuple(sorted(set(FOLDER_CLASSES.values())))
TEST_FRACTION = 0.25


def stratified_test_ids(ids_by_class: list[list[str]], seed: int) -> set[str]:
    """The test video ids of split "1": per class, a seeded choice of round(n * TEST_FRACTION) of its ids."""
    rng = np.random.default_rng([seed, 1])
    chosen = set()
    for ids in ids_by_class:
        order = rng.permutation(len(ids))
        chosen.update(ids[i] for i in order[: int(np.floor(len(ids) * TEST_FRACTION + 0.5))])
    return chosen


def load(root: str | Path, seed: int = 0) -> Dataset:
    """Read UCF Sports from ``root`` (see the module docstring) with a stratified split drawn from ``seed``."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"ucfsports: seed must be a non-negative integer, got {seed!r}")
    root = open_root(root, "ucfsports")
    found: list[tuple[str, str, int, str | None]] = []  # (id, path, label, boxes)
    for folder_name, name in FOLDER_CLASSES.items():
        for folder in subfolders(require_dir(root / folder_name, f"the video folder of class {name!r}")):
            videos = video_files(folder)
            path = videos[0] if videos else folder
            gt = folder / "gt"
            vid = video_id(path, root) if videos else folder.relative_to(root).as_posix()
            found.append((vid, str(path), CLASSES.index(name), str(gt) if gt.is_dir() else None))
    found.sort()
    by_class = [[vid for vid, _, label, _ in found if label == k] for k in range(len(CLASSES))]
    test = stratified_test_ids(by_class, int(seed))
    records = [VideoRecord(id=vid, path=path, labels=(label,), boxes=boxes,
                           splits={"1": TEST if vid in test else TRAIN})
               for vid, path, label, boxes in found]
    return make_dataset("ucfsports", root, CLASSES, records, ("1",))
