"""UCF11, "UCF YouTube Action" (Liu, Luo and Shah 2009): 1,600 clips of 11 actions in 25 groups each.

Official layout, as unpacked from UCF11_updated_mpg.rar / action_youtube_naudio.zip::

    root/<class>/v_<name>_<NN>/v_<name>_<NN>_<MM>.avi      (NN = group 01..25, MM = clip)

with the 11 class folders basketball, biking, diving, golf_swing, horse_riding, soccer_juggling,
swing, tennis_swing, trampoline_jumping, volleyball_spiking, walking (the group folders of a
class need not repeat its name: basketball holds ``v_shooting_NN``). ``Annotation`` folders and
non-video files are ignored. ``group`` is ``"<class>/<NN>"``.

There is no official split file. The protocol is group-wise: 5 splits "1".."5", each choosing at
random 15 train and 10 test group numbers per class. Split k draws from a numpy Generator seeded
with ``(seed, k)``, class by class in class order, so a split depends only on ``seed`` and never on
which videos are on disk.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from glimpse.extract.datasets.base import (
    Dataset,
    DatasetError,
    make_dataset,
    open_root,
    require_dir,
    subfolders,
    video_files,
    video_id,
)
from glimpse.store.schema import TEST, TRAIN, VideoRecord

CLASSES = ("basketball", "biking", "diving", "golf_swing", "horse_riding", "soccer_juggling", "swing",
           "tennis_swing", "trampoline_jumping", "volleyball_spiking", "walking")
SPLITS = ("1", "2", "3", "4", "5")
N_GROUPS, N_TRAIN_GROUPS = 25, 15
GROUP_DIR = re.compile(r"^v_.+_(\d+)$")
IGNORED_DIRS = {"Annotation"}


def train_groups(seed: int, split: str) -> dict[str, set[int]]:
    """The 15 train group numbers (1..25) of every class in ``split``; the other 10 are test."""
    rng = np.random.default_rng([seed, int(split)])
    return {name: set((rng.permutation(N_GROUPS)[:N_TRAIN_GROUPS] + 1).tolist()) for name in CLASSES}


def load(root: str | Path, seed: int = 0, classes: tuple[str, ...] | None = None) -> Dataset:
    """Read UCF11 from ``root`` (see the module docstring) with group-wise random splits drawn from ``seed``;
    ``classes``: only these class folders are read (and need to exist)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"ucf11: seed must be a non-negative integer, got {seed!r}")
    root = open_root(root, "ucf11")
    train = {split: train_groups(int(seed), split) for split in SPLITS}
    records = []
    for label, name in enumerate(CLASSES):
        if classes is not None and name not in classes:
            continue
        for folder in subfolders(require_dir(root / name, f"the video folder of class {name!r}")):
            if folder.name in IGNORED_DIRS:
                continue
            match = GROUP_DIR.match(folder.name)
            if match is None or not 1 <= int(match.group(1)) <= N_GROUPS:
                raise DatasetError(f"{folder}: expected a group folder v_<name>_<NN> with NN in 01..{N_GROUPS}")
            group = int(match.group(1))
            for path in video_files(folder):
                records.append(VideoRecord(
                    id=video_id(path, root), path=str(path), labels=(label,), group=f"{name}/{group:02d}",
                    splits={split: TRAIN if group in train[split][name] else TEST for split in SPLITS},
                ))
    return make_dataset("ucf11", root, CLASSES, records, SPLITS)
