"""HMDB-51 (Kuehne et al. 2011): 6,766 clips of 51 actions, 3 official 70/30 splits.

Official layout, as unpacked from hmdb51_org.rar and test_train_splits.rar::

    root/<class>/<name>.avi                                  (51 class folders)
    root/testTrainMulti_7030_splits/<class>_test_split<k>.txt    (51 x 3 = 153 files, k = 1, 2, 3)

Each split file line is ``"<name>.avi <id> "`` (with the official trailing space), id 1 = train,
2 = test, 0 = unused (per class and split: 70 train, 30 test, the rest unused). Classes are the
sorted class names taken from the split file names. HMDB-51 has no groups.
"""

from __future__ import annotations

import re
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

SPLITS_DIR = "testTrainMulti_7030_splits"
SPLITS = ("1", "2", "3")
SPLIT_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<k>\d+)\.txt$")
ROLES = {"1": TRAIN, "2": TEST, "0": UNUSED}


def load(root: str | Path) -> Dataset:
    """Read HMDB-51 from ``root`` (see the module docstring for the layout); all 3 splits of every class needed."""
    root = open_root(root, "hmdb51")
    lists = require_dir(root / SPLITS_DIR, "the split file folder")
    classes = tuple(sorted({m.group("name") for p in lists.iterdir() if (m := SPLIT_FILE.match(p.name))}))
    if not classes:
        raise DatasetError(f"expected <class>_test_split<k>.txt files in {lists}, found none")
    paths: dict[str, Path] = {}
    labels: dict[str, int] = {}
    roles: dict[str, dict[str, str]] = {}
    for label, name in enumerate(classes):
        videos = require_dir(resolve_inside(root, name, lists), f"the video folder of class {name!r}")
        for k in SPLITS:
            file = lists / f"{name}_test_split{k}.txt"
            for number, line in read_lines(file, f"the split {k} file of class {name!r}"):
                parts = line.split()
                if len(parts) != 2 or parts[1] not in ROLES:
                    raise DatasetError(f"{file}, line {number}: expected '<video>.avi <0|1|2>', got {line!r}")
                path = resolve_inside(videos, parts[0], file, number)
                vid = video_id(path, root)
                seen = roles.setdefault(vid, {})
                if seen.get(k, ROLES[parts[1]]) != ROLES[parts[1]]:
                    raise DatasetError(f"{file}, line {number}: {parts[0]!r} is listed twice with different ids")
                seen[k] = ROLES[parts[1]]
                paths[vid], labels[vid] = path, label
    records = [VideoRecord(id=vid, path=str(path), labels=(labels[vid],),
                           splits={k: roles[vid].get(k, UNUSED) for k in SPLITS})
               for vid, path in paths.items()]
    return make_dataset("hmdb51", root, classes, records, SPLITS)
