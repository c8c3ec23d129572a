"""Builders of small fake dataset trees in the official layouts, holding tiny real encoded videos.

Every video is the same 64x64, 4-frame clip encoded once per container by ``glimpse.media.encode.write_video``
and copied, so a tree of hundreds of videos costs milliseconds. ``SMALL_TREES`` holds one builder
per dataset of the registry, each writing a loadable tree with every listed video present.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from glimpse.extract.datasets import hollywood2, ucf11, ucfsports
from glimpse.media.encode import write_video

N_FRAMES, SIZE = 4, 64


def reference_dir() -> Path | None:
    """The real official split files: ``shared/reference`` beside the repository, else $GLIMPSE_REFERENCE."""
    beside = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    if beside.is_dir():
        return beside
    env = os.environ.get("GLIMPSE_REFERENCE")
    return Path(env) if env and Path(env).is_dir() else None


def tiny_frames() -> np.ndarray:
    """(4, 64, 64, 3) uint8: a bright square moving right over a gradient."""
    frames = np.zeros((N_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(0, 200, SIZE, dtype=np.uint8)[None, None, :]
    for t in range(N_FRAMES):
        frames[t, 20:36, 8 + 8 * t:24 + 8 * t] = 255
    return frames


@functools.cache
def tiny_video_bytes(suffix: str) -> bytes:
    """The bytes of the tiny clip encoded in the container ``suffix`` (.avi, .mp4, .mkv)."""
    with tempfile.TemporaryDirectory() as tmp:
        return write_video(Path(tmp) / f"clip{suffix}", tiny_frames()).read_bytes()


def put_video(path: Path) -> Path:
    """Write the tiny real clip at ``path`` (container from its suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_video_bytes(path.suffix.lower()))
    return path


def touch(path: Path) -> Path:
    """Create an empty file at ``path`` (a placeholder video for listing-only tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def write_text(path: Path, lines: list[str], newline: str = "\n") -> Path:
    """Write ``lines`` to ``path``, each ended by ``newline``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode())
    return path


def copy_reference(source: Path, target: Path, names: list[str]) -> None:
    """Copy the reference files ``names`` byte for byte from ``source`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source / name, target / name)


# --------------------------------------------------------------------------- one builder per dataset

def make_ucf11(root: Path, clips_per_group: int = 1) -> Path:
    """All 11 classes x 25 groups of UCF11, plus an Annotation folder and a stray text file to ignore."""
    for name in ucf11.CLASSES:
        stem = "v_shooting" if name == "basketball" else f"v_{name}"
        for group in range(1, ucf11.N_GROUPS + 1):
            for clip in range(1, clips_per_group + 1):
                put_video(root / name / f"{stem}_{group:02d}" / f"{stem}_{group:02d}_{clip:02d}.avi")
        write_text(root / name / "Annotation" / f"{stem}_01_01.xgtf", ["<xml/>"])
        write_text(root / name / f"{stem}_01" / "notes.txt", ["not a video"])
    return root


def make_ucf_layout(root: Path, lists: dict[int, dict[str, list[str]]], classes: list[str],
                    absent: set[str] = frozenset(), boxes: bool = False, newline: str = "\r\n") -> Path:
    """A UCF-101 style tree: ``lists[k]["train"|"test"]`` hold "Class/file" lines; listed videos are written.

    Videos named in ``absent`` are listed but not written; ``boxes`` adds a synthetic box file beside each.
    """
    index = {name: i + 1 for i, name in enumerate(classes)}
    write_text(root / "ucfTrainTestlist" / "classInd.txt", [f"{i} {name}" for name, i in index.items()], newline)
    for k, roles in lists.items():
        train = [f"{rel} {index[rel.split('/')[0]]}" for rel in roles["train"]]
        write_text(root / "ucfTrainTestlist" / f"trainlist{k:02d}.txt", train, newline)
        write_text(root / "ucfTrainTestlist" / f"testlist{k:02d}.txt", roles["test"], newline)
    for rel in {rel for roles in lists.values() for paths in roles.values() for rel in paths} - set(absent):
        video = put_video(root / "UCF-101" / rel)
        if boxes:
            meta = {"width": SIZE, "height": SIZE, "fps": 25,
                    "boxes": [[8 + 8 * t, 20, 24 + 8 * t, 36] for t in range(N_FRAMES)]}
            video.with_name(video.stem + ".boxes.json").write_text(json.dumps(meta))
    return root


UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


def ucf_lists(suffix: str = ".avi", splits: tuple[int, ...] = (1, 2, 3)) -> dict[int, dict[str, list[str]]]:
    """Lists over 3 classes x 3 groups x 2 clips; split k tests group k (HandstandPushups keeps its quirk)."""
    def rel(name: str, group: int, clip: int) -> str:
        stem = "HandStandPushups" if name == "HandstandPushups" else name
        return f"{name}/v_{stem}_g{group:02d}_c{clip:02d}{suffix}"

    return {k: {role: [rel(name, g, c) for name in UCF_CLASSES for g in (1, 2, 3) for c in (1, 2)
                       if (g == k) == (role == "test")]
                for role in ("train", "test")}
            for k in splits}


def make_ucf101(root: Path) -> Path:
    """A 3-class, 18-video UCF-101 tree with all 3 splits and CRLF list files."""
    return make_ucf_layout(root, ucf_lists(), UCF_CLASSES)


def make_synthetic(root: Path, splits: tuple[int, ...] = (1,)) -> Path:
    """A synthetic tree: UCF-101 layout of .mp4 videos with box files beside them, and the manifest."""
    make_ucf_layout(root, ucf_lists(".mp4", splits), UCF_CLASSES, boxes=True, newline="\n")
    (root / "synthetic.json").write_text(json.dumps({"generator": "tests", "classes": UCF_CLASSES}))
    return root


HMDB_CLASSES = ["brush_hair", "wave"]


def make_hmdb51(root: Path) -> Path:
    """Two HMDB-51 classes of 4 videos; in split k video k-1 is test, video 3 unused, the rest train."""
    for name in HMDB_CLASSES:
        videos = [f"{name}_clip_{i}.avi" for i in range(4)]
        for k in (1, 2, 3):
            ids = ["2" if i == k - 1 else "0" if i == 3 else "1" for i in range(4)]
            write_text(root / "testTrainMulti_7030_splits" / f"{name}_test_split{k}.txt",
                       [f"{video} {i} " for video, i in zip(videos, ids, strict=True)])
        for video in videos:
            put_video(root / name / video)
    return root


#: clip -> (role, actions shown)
HOLLYWOOD2_CLIPS = {
    "actioncliptrain00001": ("train", {"AnswerPhone"}),
    "actioncliptrain00002": ("train", {"Kiss", "HugPerson"}),
    "actioncliptrain00003": ("train", {"Run"}),
    "actioncliptest00001": ("test", {"DriveCar", "GetOutCar"}),
    "actioncliptest00002": ("test", {"StandUp"}),
}


def make_hollywood2(root: Path, clips: dict[str, tuple[str, set[str]]] = HOLLYWOOD2_CLIPS) -> Path:
    """Hollywood2 clip sets for all 12 actions over ``clips``, plus decoy ClipSets files to ignore."""
    for action in hollywood2.ACTIONS:
        for role in ("train", "test"):
            lines = [f"{clip}  1" if action in actions else f"{clip} -1"
                     for clip, (clip_role, actions) in clips.items() if clip_role == role]
            write_text(root / "ClipSets" / f"{action}_{role}.txt", lines)
    write_text(root / "ClipSets" / "actions_train.txt", ["not a clip set"])
    write_text(root / "ClipSets" / "EXT_scene_train.txt", ["scene clips are not actions"])
    for clip in clips:
        put_video(root / "AVIClips" / f"{clip}.avi")
    return root


def make_ucfsports(root: Path, counts: dict[str, int] | None = None) -> Path:
    """All 13 UCF Sports class folders; ``counts`` videos in some; the first video has a gt folder of 3 boxes."""
    counts = counts or {"Diving-Side": 2, "Golf-Swing-Back": 1, "Golf-Swing-Front": 1, "Walk-Front": 4}
    for folder in ucfsports.FOLDER_CLASSES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, counts.get(folder, 0) + 1):
            put_video(root / folder / f"{i:03d}" / f"{folder.lower()}_{i:03d}.avi")
    if not counts.get("Diving-Side"):
        return root
    gt = root / "Diving-Side" / "001" / "gt"
    write_text(gt / "diving_1.tif.txt", ["10 20 30 40"])
    write_text(gt / "diving_2.tif.txt", ["10 20 30 40", "0 30 20 20"])
    write_text(gt / "diving_4.tif.txt", ["5\t6\t7\t8\t"])
    return root


OLYMPIC_LISTS = {"bowling": {"train": ["bowl_a", "bowl_b"], "test": ["bowl_c"]},
                 "vault": {"train": ["vault_a"], "test": ["vault_b"]}}


def make_olympic(root: Path, lists: dict[str, dict[str, list[str]]] = OLYMPIC_LISTS,
                 suffixes: dict[str, str] | None = None) -> Path:
    """Olympic Sports lists and videos; ``suffixes`` maps an id to its file suffix (default .avi, None: absent)."""
    suffixes = suffixes or {}
    for name, roles in lists.items():
        for role, ids in roles.items():
            write_text(root / role / f"{name}.txt", ids)
            for vid in ids:
                suffix = suffixes.get(vid, ".avi")
                if suffix == ".seq":
                    write_text(root / name / f"{vid}.seq", ["norpix"])
                elif suffix is not None:
                    put_video(root / name / f"{vid}{suffix}")
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


#: dataset name -> builder of a small loadable tree under the given root
SMALL_TREES: dict[str, Callable[[Path], Path]] = {
    "ucf11": make_ucf11,
    "hmdb51": make_hmdb51,
    "ucf101": make_ucf101,
    "hollywood2": make_hollywood2,
    "ucfsports": make_ucfsports,
    "olympic": make_olympic,
    "synthetic": make_synthetic,
}

#: dataset name -> (a split file of its small tree, how a line names a video in it: "{path}" is replaced)
SPLIT_FILES = {
    "hmdb51": ("testTrainMulti_7030_splits/wave_test_split2.txt", "{path} 1 "),
    "ucf101": ("ucfTrainTestlist/testlist02.txt", "{path}"),
    "hollywood2": ("ClipSets/Kiss_test.txt", "{path}  1"),
    "olympic": ("test/vault.txt", "{path}"),
    "synthetic": ("ucfTrainTestlist/trainlist01.txt", "{path} 1"),
}
