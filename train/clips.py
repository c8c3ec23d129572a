"""Which videos a run uses and which frames of them: split roles, validation by group, clip sampling.

A clip is T time steps taken every ``stride`` stored frames. Training takes one clip per video per
epoch at a random start; evaluation covers the whole video with clips (Sharma's 30-step blocks,
Quan's segments) whose scores are aggregated into one video score. A video shorter than a clip is
padded by repeating its last frame.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from glimpse.store import Store
from glimpse.store.schema import DONE, TEST, TRAIN


@dataclass(frozen=True)
class Clip:
    """``frames`` time steps T, each ``stride`` stored frames after the previous one (d)."""

    frames: int
    stride: int = 1

    @property
    def span(self) -> int:
        """Stored frames one clip covers, first to last."""
        return (self.frames - 1) * self.stride + 1

    def start_range(self, n_frames: int) -> int:
        """How many start positions a video of ``n_frames`` frames offers (1 when it must be padded)."""
        return max(n_frames - self.span, 0) + 1

    def indices(self, n_frames: int, start: int) -> np.ndarray:
        """(T,) stored frame indices of the clip starting at ``start``; past the end repeats the last frame."""
        return np.minimum(start + self.stride * np.arange(self.frames), n_frames - 1)

    def padded(self, n_frames: int) -> bool:
        """Whether a video of ``n_frames`` frames is shorter than one clip."""
        return n_frames < self.span

    def cover(self, n_frames: int) -> np.ndarray:
        """(clips, T) indices of clips that together cover every frame of the video, for evaluation.

        For each offset 0..stride-1 the frames offset, offset + stride, ... are cut into consecutive
        clips of T steps; the last clip of an offset ends at the video's end (overlapping the one
        before it) rather than being padded, unless the video is shorter than one clip.
        """
        clips = []
        for offset in range(min(self.stride, n_frames)):
            steps = np.arange(offset, n_frames, self.stride)  # (frames at this offset,)
            if len(steps) <= self.frames:
                clips.append(np.concatenate([steps, np.full(self.frames - len(steps), steps[-1])]))
                continue
            starts = list(range(0, len(steps) - self.frames + 1, self.frames))
            if starts[-1] + self.frames < len(steps):
                starts.append(len(steps) - self.frames)
            clips += [steps[s : s + self.frames] for s in starts]
        return np.stack(clips)  # (clips, T)


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
        if e.status != DONE:
            not_done += 1
            continue
        video = Video(e.id, e.key, tuple(e.labels), e.n_frames, e.group)
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


def epoch_plan(videos: list[Video] | tuple[Video, ...], clip: Clip, seed: int, epoch: int) -> list[tuple[int, int]]:
    """One epoch of training items: (video index, clip start) for every video once, shuffled.

    Depends only on (seed, epoch), so a resumed run sees exactly the clips an uninterrupted one saw.
    """
    rng = np.random.default_rng([seed, epoch])
    starts = [int(rng.integers(clip.start_range(v.n_frames))) for v in videos]
    order = rng.permutation(len(videos))
    return [(int(i), starts[i]) for i in order]
