"""Which frames a run trains and tests on: one small, explicit clip policy per model, and epoch plans.

A policy says which T-frame clips of a video one training epoch uses and which clips cover the video
at test time (their scores are aggregated into one video score):

=================  ==========================================================  ===============================
policy             training epoch                                              test
=================  ==========================================================  ===============================
``windows``        every T-frame window, starts ``stride`` (s) apart (Sharma)  consecutive T-frame blocks
``all_windows``    the same                                                    every T-frame window, stride 1
``segments``       T consecutive frames, starts ``stride`` (d) apart (Quan)    the same segments (vote)
``random``         ``clips_per_video`` random T-frame windows (CHAM, sparse)   consecutive T-frame blocks
``spread``         T frames equally spaced over the video, random phase (HAN)  T frames equally spaced
=================  ==========================================================  ===============================

``clips_per_video`` caps the dense policies too (a seeded random subset of the windows each epoch).
A video shorter than T frames gives one clip padded by repeating its last frame.

An epoch plan is video-major: videos are visited in a seeded random order and gathered into groups (the
shuffle buffer) of as many videos as ``frames`` frames hold (a byte budget, see train/loader.py), or at most
``videos`` videos; the clips of a group's videos are shuffled together, so a batch draws its clips from every
video of its group (the released code's full shuffle when the training set fits one group). Each video's frames
are read once per epoch and every clip is cut from them. The plan depends only on (seed, epoch), so a run
resumed inside an epoch sees exactly the clips an uninterrupted one saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Policy:
    """T = ``frames`` per clip; ``stride`` the spacing of clip starts; ``clips_per_video`` a cap (0: all)."""

    frames: int
    stride: int = 1
    clips_per_video: int = 0
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.frames < 1 or self.stride < 1 or self.clips_per_video < 0:
            raise ValueError(f"{self.name}: frames and stride must be >= 1 and clips_per_video >= 0, got {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON fields, with the policy's name (what config.json records under data.sampling)."""
        return {"name": self.name, **asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Policy:
        """The inverse of :meth:`to_dict`."""
        fields = dict(data)
        name = fields.pop("name")
        if name not in POLICIES:
            raise ValueError(f"unknown clip policy {name!r}; policies: {', '.join(POLICIES)}")
        return POLICIES[name](**fields)

    @property
    def span(self) -> int:
        """Stored frames one clip covers, first to last (the whole video for ``spread``)."""
        return self.frames

    def padded(self, n_frames: int) -> bool:
        """Whether a video of ``n_frames`` frames is shorter than one clip."""
        return n_frames < self.span

    def window(self, n_frames: int, start: int) -> np.ndarray:
        """(T,) indices of the T consecutive frames from ``start``; past the end repeats the last frame."""
        return np.minimum(start + np.arange(self.frames), n_frames - 1)

    def starts(self, n_frames: int) -> np.ndarray:
        """Every start ``stride`` apart whose window fits (just 0 for a video shorter than T)."""
        return np.arange(0, max(n_frames - self.frames, 0) + 1, self.stride)

    def dense(self, n_frames: int) -> np.ndarray:
        """(windows, T) every window of :meth:`starts`."""
        return np.stack([self.window(n_frames, int(s)) for s in self.starts(n_frames)])

    def blocks(self, n_frames: int) -> np.ndarray:
        """(blocks, T) consecutive T-frame blocks covering every frame, the last one ending at the video's end."""
        starts = list(range(0, max(n_frames - self.frames, 0) + 1, self.frames))
        if starts[-1] + self.frames < n_frames:
            starts.append(n_frames - self.frames)
        return np.stack([self.window(n_frames, s) for s in starts])

    def candidates(self, n_frames: int) -> int:
        """How many clips one epoch of a video of ``n_frames`` frames offers before the cap."""
        return len(self.starts(n_frames))

    def count(self, n_frames: int) -> int:
        """Clips of one video in one training epoch."""
        n = self.candidates(n_frames)
        return min(n, self.clips_per_video) if self.clips_per_video else n

    def train(self, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        """(clips, T) the training clips of one video in one epoch, drawn from ``rng``."""
        clips = self.dense(n_frames)
        if self.clips_per_video and self.clips_per_video < len(clips):
            clips = clips[np.sort(rng.choice(len(clips), self.clips_per_video, replace=False))]
        return clips

    def cover(self, n_frames: int) -> np.ndarray:
        """(clips, T) the clips a video is tested on (scores aggregated into the video's)."""
        return self.blocks(n_frames)


@dataclass(frozen=True)
class Windows(Policy):
    """Sharma et al.: every T-frame window at training stride s; at test 30-step blocks, averaged."""

    name: ClassVar[str] = "windows"


@dataclass(frozen=True)
class AllWindows(Windows):
    """Sharma's released code: every T-frame window at training stride s; at test every window at stride 1 (its
    testing_stride), each clip's vote counted (aggregation released_vote)."""

    name: ClassVar[str] = "all_windows"

    def cover(self, n_frames: int) -> np.ndarray:
        return np.stack([self.window(n_frames, s) for s in range(max(n_frames - self.frames, 0) + 1)])


@dataclass(frozen=True)
class Segments(Policy):
    """Quan et al. (Sec. 3.4, Eq. 13-15): segments of T consecutive frames, starts d = ``stride`` apart,
    in training and at test, where the video takes the majority vote of all its segments."""

    stride: int = 2
    name: ClassVar[str] = "segments"

    def cover(self, n_frames: int) -> np.ndarray:
        return self.dense(n_frames)


@dataclass(frozen=True)
class RandomWindows(Policy):
    """Random T-frame windows, ``clips_per_video`` per video per epoch (Yan et al.'s CHAM counts
    iterations, ``--steps``; one per video is the sparse epoch); at test consecutive blocks."""

    clips_per_video: int = 1
    name: ClassVar[str] = "random"

    def candidates(self, n_frames: int) -> int:
        return max(self.clips_per_video, 1)

    def count(self, n_frames: int) -> int:
        return self.candidates(n_frames)

    def train(self, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        starts = rng.integers(0, max(n_frames - self.frames, 0) + 1, size=self.count(n_frames))
        return np.stack([self.window(n_frames, int(s)) for s in starts])


@dataclass(frozen=True)
class Spread(Policy):
    """Wang et al.'s HAN: T frames equally spaced over the whole video; in training at a random phase."""

    name: ClassVar[str] = "spread"

    @property
    def span(self) -> int:
        return 1

    def spaced(self, n_frames: int, phase: float) -> np.ndarray:
        """(T,) frames floor((i + phase) * n / T), phase in [0, 1)."""
        return np.minimum(((np.arange(self.frames) + phase) * n_frames / self.frames).astype(int), n_frames - 1)

    def candidates(self, n_frames: int) -> int:
        return max(self.clips_per_video, 1)

    def count(self, n_frames: int) -> int:
        return self.candidates(n_frames)

    def train(self, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self.spaced(n_frames, float(p)) for p in rng.random(self.count(n_frames))])

    def cover(self, n_frames: int) -> np.ndarray:
        return self.spaced(n_frames, 0.5)[None]


#: policy name -> class (what --sampling takes and a ModelSpec's ``sampling`` names)
POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Windows, AllWindows, Segments, RandomWindows, Spread)}


def make_policy(name: str, frames: int, stride: int | None = None, clips_per_video: int | None = None) -> Policy:
    """Policy ``name`` with T = ``frames``; None leaves a field at the policy's default."""
    if name not in POLICIES:
        raise ValueError(f"unknown clip policy {name!r}; policies: {', '.join(POLICIES)}")
    given = {"stride": stride, "clips_per_video": clips_per_video}
    return POLICIES[name](frames, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True)
class Group:
    """One shuffle buffer of a plan: its videos, the frame range read from each, and its clips in order.

    ``ranges`` are (video index, first frame, end frame) per video, by video index: the layout of the group's
    frames as read (each range's frames one after the other); ``items`` (clips,) video indices and ``clips``
    (clips, T) stored frame indices, in the order training sees them.
    """

    ranges: tuple[tuple[int, int, int], ...]
    items: np.ndarray
    clips: np.ndarray

    @property
    def frames(self) -> int:
        """Frames the group's ranges hold."""
        return sum(hi - lo for _, lo, hi in self.ranges)

    def rows(self) -> np.ndarray:
        """(clips, T) each clip's frames as rows of the group's frames read in ``ranges`` order."""
        shift = np.zeros(max(i for i, _, _ in self.ranges) + 1, dtype=np.int64)
        at = 0
        for i, lo, hi in self.ranges:
            shift[i] = at - lo
            at += hi - lo
        return self.clips + shift[self.items][:, None]


def epoch_plan(n_frames: Sequence[int], policy: Policy, seed: int, epoch: int, videos: int = 0,
               frames: int = 0) -> list[Group]:
    """One training epoch over videos of ``n_frames`` frames, video-major (see the module docstring): groups of
    at most ``videos`` videos (0: no cap) whose ranges hold at most ``frames`` frames (0: no cap; a video longer
    than that is a group of its own).

    Depends only on (seed, epoch): a resumed run sees exactly the clips an uninterrupted one saw.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(n_frames))
    clips = {int(i): policy.train(int(n_frames[i]), rng) for i in order}
    spans = {i: (int(c.min()), int(c.max()) + 1) for i, c in clips.items()}
    members: list[list[int]] = [[]]
    held = 0
    for i in (int(i) for i in order):
        size = spans[i][1] - spans[i][0]
        if members[-1] and (videos and len(members[-1]) == videos or frames and held + size > frames):
            members.append([])
            held = 0
        members[-1].append(i)
        held += size
    plan = []
    for group in members if members[0] else []:
        items = np.concatenate([np.full(len(clips[i]), i) for i in group])
        picked = np.concatenate([clips[i] for i in group])  # (clips, T)
        shuffle = rng.permutation(len(items))
        ranges = tuple((i, *spans[i]) for i in sorted(group))
        plan.append(Group(ranges, items[shuffle], picked[shuffle]))
    return plan


def items_per_epoch(n_frames: Sequence[int], policy: Policy) -> int:
    """Training clips in one epoch (the same every epoch)."""
    return sum(policy.count(int(n)) for n in n_frames)
