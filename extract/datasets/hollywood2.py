"""Hollywood2 actions (Marszalek, Laptev and Schmid 2009): 1,707 movie clips, 12 actions, multi-label.

Official layout, as unpacked from Hollywood2-actions.tar.gz::

    root/AVIClips/<clip>.avi
    root/ClipSets/<Action>_train.txt    "<clip>  1" (shows the action) or "<clip> -1" (does not)
    root/ClipSets/<Action>_test.txt

for the 12 actions AnswerPhone DriveCar Eat FightPerson GetOutCar HandShake HugPerson Kiss Run
SitDown SitUp StandUp. Other ClipSets files (actions_*.txt, scene sets) are ignored. A clip's
labels are every action it shows; there is one split "1": clips of the *_train.txt files train,
clips of the *_test.txt files test.
"""

from __future__ import annotations

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
from glimpse.store.schema import TEST, TRAIN, VideoRecord

ACTIONS = ("AnswerPhone", "DriveCar", "Eat", "FightPerson", "GetOutCar", "HandShake", "HugPerson", "Kiss", "Run",
           "SitDown", "SitUp", "StandUp")
CLIPS_DIR, SETS_DIR = "AVIClips", "ClipSets"
FLAGS = {"1": True, "-1": False}


def load(root: str | Path) -> Dataset:
    """Read Hollywood2 from ``root`` (see the module docstring); all 24 action clip sets are required."""
    root = open_root(root, "hollywood2")
    clips = require_dir(root / CLIPS_DIR, "the clip folder")
    sets = require_dir(root / SETS_DIR, "the clip set folder")
    paths: dict[str, Path] = {}
    roles: dict[str, str] = {}
    labels: dict[str, set[int]] = {}
    for label, action in enumerate(ACTIONS):
        for role in (TRAIN, TEST):
            file = sets / f"{action}_{role}.txt"
            for number, line in read_lines(file, f"the {role} clip set of {action}"):
                parts = line.split()
                if len(parts) != 2 or parts[1] not in FLAGS:
                    raise DatasetError(f"{file}, line {number}: expected '<clip> 1' or '<clip> -1', got {line!r}")
                path = resolve_inside(clips, parts[0] + ".avi", file, number)
                clip = video_id(path, clips)
                if roles.setdefault(clip, role) != role:
                    raise DatasetError(f"{file}, line {number}: clip {clip!r} is in both train and test clip sets")
                paths[clip] = path
                labels.setdefault(clip, set())
                if FLAGS[parts[1]]:
                    labels[clip].add(label)
    unlabeled = [clip for clip, found in labels.items() if not found]
    if unlabeled:
        raise DatasetError(f"{sets}: clips {unlabeled[:5]} are marked 1 in no action clip set; every Hollywood2 "
                           "clip should show at least one action")
    records = [VideoRecord(id=clip, path=str(path), labels=tuple(sorted(labels[clip])), splits={"1": roles[clip]})
               for clip, path in paths.items()]
    return make_dataset("hollywood2", root, ACTIONS, records, ("1",), multilabel=True)
