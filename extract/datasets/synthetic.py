"""The synthetic action dataset written by ``glimpse synth`` (extract/synth.py), in the UCF-101 layout.

Layout::

    root/synthetic.json                      the generator's manifest; its presence identifies the dataset
    root/UCF-101/<Class>/<video>.mp4         (or .avi: whatever the lists name)
    root/UCF-101/<Class>/<video>.boxes.json  {"width": W, "height": H, "fps": F, "boxes": [[x0, y0, x1, y1], ...]}
    root/ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt   (02 and 03 read if present)

Lists and classes are parsed exactly as UCF-101's (:func:`ucf101.read_ucf_layout`); split "1" is
required, "2" and "3" are optional. Each video's ``boxes`` is its box file (one box per source
frame, see :func:`base.read_boxes`), or None, with a warning, where a present video has none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from glimpse.extract.datasets.base import Dataset, DatasetError, make_dataset, open_root, require_file
from glimpse.extract.datasets.ucf101 import read_ucf_layout

log = logging.getLogger(__name__)

MANIFEST = "synthetic.json"
BOXES_SUFFIX = ".boxes.json"


def boxes_path(video: str | Path) -> Path:
    """The box file of a synthetic video: the same path with its suffix replaced by ``.boxes.json``."""
    video = Path(video)
    return video.with_name(video.stem + BOXES_SUFFIX)


def load(root: str | Path) -> Dataset:
    """Read a synthetic dataset from ``root`` (see the module docstring)."""
    root = open_root(root, "synthetic")
    manifest = require_file(root / MANIFEST, "the synthetic dataset manifest (written by `glimpse synth`)")
    try:
        json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{manifest}: expected a JSON manifest ({err})") from None
    classes, records, splits = read_ucf_layout(root, required=(1,), optional=(2, 3))
    with_boxes, unboxed = [], []
    for record in records:
        boxes = boxes_path(record.path)
        if boxes.is_file():
            record = dataclasses.replace(record, boxes=str(boxes))
        elif Path(record.path).is_file():
            unboxed.append(record.id)
        with_boxes.append(record)
    if unboxed:
        log.warning("synthetic: %d videos under %s have no %s box file beside them: %s", len(unboxed), root,
                    BOXES_SUFFIX, ", ".join(sorted(unboxed)[:5]))
    return make_dataset("synthetic", root, classes, with_boxes, splits)
