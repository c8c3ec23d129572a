"""Which videos a run uses: split roles, validation held out by group (which frames of them: train/sampling.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from glimpse.store import Store
from glimpse.store.schema import DONE, TEST, TRAIN, VideoEntry


@dataclass(frozen=True)
class Video:
    """What training needs to know about one done video of a store."""

    id: str
    key: str
    labels: tuple[int, ...]
    n_frames: int
    group: str | None = None

    @property
    def label(self) -> int:
        """The primary (first) class index."""
        return self.labels[0]


def training_video(entry: VideoEntry) -> Video | None:
    """The Video training and prediction use for a store entry, or None when the entry is not done."""
    if entry.status != DONE:
        return None
    return Video(entry.id, entry.key, tuple(entry.labels), entry.n_frames, entry.group)


def role_videos(store: Store, split: str, role: str) -> list[Video]:
    """The done videos of ``split`` whose role is ``role`` ("train", "test", "unused"), in manifest order."""
    return [v for e in store.videos if e.splits.get(split) == role and (v := training_video(e)) is not None]


@dataclass(frozen=True)
class Selection:
    """The videos of one split: train, validation (held out of train), test, and what was left out."""

    train: tuple[Video, ...]
    val: tuple[Video, ...]
    test: tuple[Video, ...]
    not_done: int
    val_groups: tuple[str, ...]


def split_videos(store: Store, split: str) -> tuple[list[Video], list[Video], int]:
    """The done train and test videos of official split ``split``, and how many others were skipped.

    Raises a ValueError naming the splits the store has when ``split`` is not one of them.
    """
    entries = store.videos
    known = sorted({name for e in entries for name in e.splits})
    if split not in known:
        raise ValueError(f"{store.path}: no split {split!r} in this store; its splits are {known}")
    train, test, not_done = [], [], 0
    for e in entries:
        role = e.splits.get(split)
        if role not in (TRAIN, TEST):
            continue
        video = training_video(e)
        if video is None:
            not_done += 1
            continue
        (train if role == TRAIN else test).append(video)
    return train, test, not_done


def hold_out(videos: list[Video], fraction: float, seed: int) -> tuple[list[Video], list[Video], list[str]]:
    """Split ``videos`` into (train, validation, validation groups), no group on both sides.

    Stratified by class: for each class (a video's first label) its groups (a video without one is
    its own group) are moved to validation in a seeded random order until at least ``fraction`` of
    the class's videos are held out, never the class's last training group. A class with a single
    group keeps it for training, so a tiny set can leave validation empty.
    """
    if fraction <= 0 or not videos:
        return list(videos), [], []

    def group_of(v: Video) -> str:
        return v.group if v.group is not None else f"video:{v.id}"

    groups: dict[str, list[Video]] = {}
    for v in videos:
        groups.setdefault(group_of(v), []).append(v)
    by_class: dict[int, list[str]] = {}
    for name in sorted(groups):
        by_class.setdefault(groups[name][0].label, []).append(name)
    rng = np.random.default_rng([seed, 0x7A1])
    left = Counter(lab for v in videos for lab in v.labels)
    chosen = []
    for label in sorted(by_class):
        names = by_class[label]
        target, held = fraction * sum(len(groups[n]) for n in names), 0
        for i in rng.permutation(len(names)):
            taken = Counter(lab for v in groups[names[i]] for lab in v.labels)
            if held >= target or any(left[lab] - n < 1 for lab, n in taken.items()):
                continue
            left -= taken
            chosen.append(names[i])
            held += len(groups[names[i]])
    chosen_set = set(chosen)
    train = [v for v in videos if group_of(v) not in chosen_set]
    val = [v for v in videos if group_of(v) in chosen_set]
    return train, val, sorted(chosen)


def select(store: Store, split: str, val_fraction: float, seed: int) -> Selection:
    """The train / validation / test videos of ``split`` (see :func:`split_videos` and :func:`hold_out`)."""
    train, test, not_done = split_videos(store, split)
    if not train:
        raise ValueError(f"{store.path}: split {split!r} has no done training videos")
    train, val, groups = hold_out(train, val_fraction, seed)
    return Selection(tuple(train), tuple(val), tuple(test), not_done, tuple(groups))
