"""Reading clips from a store fast enough for training: a reader over the store (or a RAM or disk cache),
per-channel standardization, and the datasets batches are made of (train/loader.py batches them).

An epoch reads each video's frames once per stream (the range its clips of this epoch span, only the
chunks it touches), a group of videos into one tensor, and every clip is gathered from it where the model
runs (train/sampling.py plans which). The store's
arrays are opened once in the main process and travel to the DataLoader workers open; workers are
started with "spawn" (fork can hang with some zarr and PyAV builds).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from glimpse.store import Store, open_store
from glimpse.store.chunks import StoredStream
from glimpse.train.clips import Video
from glimpse.train.models.base import STANDARDIZATIONS
from glimpse.train.sampling import Policy

log = logging.getLogger("train")

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30, "T": 2**40,
          "TB": 2**40}


def parse_bytes(text: str | int) -> int:
    """``"8GB"`` -> 8 * 2**30 bytes (K, M, G, T with or without B, binary units); an int is returned as is."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?B?)\s*", text.upper())
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 512MB or 8GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def stream_bytes(store: Store, videos: Sequence[Video], streams: Sequence[str]) -> int:
    """Bytes of the float16 cubes of ``streams`` of ``videos``, as held in memory."""
    per_frame = sum(2 * int(np.prod(store.streams[s]["frame_shape"])) for s in streams)
    return per_frame * sum(v.n_frames for v in videos)


class FeatureReader:
    """Reads frame ranges of videos' streams: from RAM (``cache``), a --cache-dir file, or the store.

    ``cache`` maps (video key, stream) to the whole float16 array, when the run holds the store in RAM;
    ``disk`` is a :class:`train.cache.DiskCache`. Store streams are opened once (:meth:`open` opens a
    run's videos up front) and travel to spawned DataLoader workers already open, so no worker reads
    the store's metadata (its manifest) again.
    """

    def __init__(self, path: str, cache: dict[tuple[str, str], np.ndarray] | None = None, disk=None) -> None:
        self.path, self.cache, self.disk = path, cache, disk
        self._store: Store | None = None
        self._streams: dict[tuple[str, str], StoredStream] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    @property
    def from_store(self) -> bool:
        """Whether clips are read from the store itself (not from RAM or a --cache-dir copy)."""
        return self.cache is None and self.disk is None

    def store(self) -> Store:
        """The store, opened on first use in this process."""
        if self._store is None:
            self._store = open_store(self.path)
        return self._store

    def open(self, videos: Sequence[Video], streams: Sequence[str]) -> FeatureReader:
        """Open the store arrays of ``videos`` now (before workers are started); returns self."""
        if self.from_store:
            for v in videos:
                for s in streams:
                    self.stream(v, s)
        return self

    def stream(self, video: Video, stream: str) -> StoredStream:
        """The video's stored stream, opened once per process."""
        found = self._streams.get((video.key, stream))
        if found is None:
            found = self._streams[(video.key, stream)] = self.store().stream(video.id, stream)
        return found

    def frames(self, video: Video, stream: str, lo: int, hi: int) -> np.ndarray:
        """(hi - lo, C, K, K) float16 frames lo..hi-1 of one stream (fewer when the stream is shorter)."""
        if self.cache is not None:
            return self.cache[(video.key, stream)][lo:hi]
        if self.disk is not None:
            return self.disk.frames(video.key, stream)[lo:hi]
        return self.stream(video, stream).read(lo, hi)

    def frame_shape(self, video: Video, stream: str) -> tuple[int, ...]:
        """(C, K, K) of one frame of the video's stream."""
        if self.cache is not None:
            return tuple(self.cache[(video.key, stream)].shape[1:])
        if self.disk is not None:
            return tuple(self.disk.layout[(video.key, stream)][1][1:])
        return tuple(self.stream(video, stream).shape[1:])

    def read_into(self, video: Video, stream: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Frames lo..hi-1 of one stream into ``out`` (hi - lo, C, K, K), a stream shorter than hi repeating its
        last frame; store chunks are decoded straight into ``out``."""
        if self.from_store:
            source = self.stream(video, stream)
            a, b = source.clip(lo, hi)
            source.read(a, b, out=out[: b - a])
        else:
            block = self.frames(video, stream, lo, hi)  # (<= hi - lo, C, K, K)
            b = lo + len(block)
            out[: b - lo] = block
        out[b - lo :] = out[b - lo - 1]

    def read(self, video: Video, stream: str, indices: np.ndarray) -> np.ndarray:
        """(len(indices), C, K, K) float16: the frames at ``indices`` (any order, repeats allowed), read in one call."""
        lo, hi = int(indices.min()), int(indices.max()) + 1
        block = self.frames(video, stream, lo, hi)  # (<= hi - lo, C, K, K): only the chunks these frames are in
        return block[np.minimum(indices - lo, len(block) - 1)]  # a stream one frame short repeats its last frame


def unfit_videos(store: Store, videos: Sequence[Video], streams: Sequence[str]) -> dict[str, str]:
    """Video id -> why its arrays of ``streams`` do not fit the store's metadata; empty for a sound store.

    Only metadata is read, no chunk: a video whose array metadata lies about its shape (or whose n_frames
    does not match its arrays) is found before training instead of failing deep inside a DataLoader.
    Each one is logged as a warning ("skipped video ..."): the callers leave it out.
    ``python -m glimpse.store verify`` also reads the data back.
    """
    unfit = {}
    for video in videos:
        problems = [p for s in streams for p in store.stream_problems(video.id, s, video.n_frames)]
        if problems:
            unfit[video.id] = "; ".join(problems)
            log.warning("skipped video %s: %s", video.id, unfit[video.id])
    return unfit


def load_cache(store: Store, videos: Sequence[Video], streams: Sequence[str], budget: int) -> dict | None:
    """Every cube of ``videos`` in RAM as float16 if they fit ``budget`` bytes, else None (read from the store)."""
    if budget <= 0:
        return None
    need = stream_bytes(store, videos, streams)
    if need > budget:
        log.info("cache: the videos need %.2f GB, more than --cache-ram %.2f GB: reading from the store",
                 need / 2**30, budget / 2**30)
        return None
    cache = {(v.key, s): store.stream(v.id, s).read() for v in videos for s in streams}
    log.info("cache: %d videos (%.2f GB) held in RAM", len(videos), need / 2**30)
    return cache


@dataclass(frozen=True)
class Normalization:
    """Per-channel standardization of each stream: (x - mean) / std, from the training videos.

    The "rms" standardization (train/models/base.py STANDARDIZATIONS) is the same map with mean 0 and std the
    channel's root mean square: x / rms, so a zero feature stays exactly zero.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    #: (stream, device) -> (mean, 1 / std), each (C, 1, 1) float32: copied to a device once, not at every step
    on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def constants(self, stream: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std) of ``stream``, each (C, 1, 1) float32 on ``device``, copied there on first use only."""
        key = (stream, device)
        if key not in self.on_device:
            mean = torch.from_numpy(self.mean[stream])[:, None, None]  # (C, 1, 1)
            scale = torch.from_numpy(1.0 / self.std[stream])[:, None, None]  # (C, 1, 1)
            self.on_device[key] = (mean.to(device), scale.to(device))
        return self.on_device[key]

    def standardize(self, stream: str, x: torch.Tensor) -> torch.Tensor:
        """(..., C, K, K) float16 tensor -> float32 standardized, computed on the tensor's device."""
        mean, scale = self.constants(stream, x.device)  # each (C, 1, 1)
        return (x.float() - mean) * scale

    def __getstate__(self) -> dict:
        """Pickled (to DataLoader workers) without the device copies."""
        return {**self.__dict__, "on_device": {}}

    def to_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors only (what a checkpoint loaded with weights_only=True can hold)."""
        return {s: {"mean": torch.from_numpy(self.mean[s]), "std": torch.from_numpy(self.std[s])} for s in self.mean}

    @classmethod
    def from_state(cls, state: dict | None) -> Normalization | None:
        """The inverse of :meth:`to_state`; None stays None (a run without standardization)."""
        if not state:
            return None
        return cls({s: v["mean"].cpu().numpy() for s, v in state.items()},
                   {s: v["std"].cpu().numpy() for s, v in state.items()})


def compute_normalization(reader: FeatureReader, videos: Sequence[Video], streams: Sequence[str],
                          max_videos: int, how: str = "mean_std") -> Normalization:
    """Mean and std per channel over every frame and position of up to ``max_videos`` evenly spread videos.

    ``how`` "rms" gives mean 0 and the root mean square sqrt(E[x^2]) as the std: x / rms, no mean shift (for models
    whose attention multiplies the cube, CHAM's Eq. 7). A channel that never varies (a dead unit of a random
    network; with rms, one that is always zero) gets std 1, so it stays as it is.
    """
    if how not in STANDARDIZATIONS:
        raise ValueError(f"standardize must be one of {STANDARDIZATIONS}, got {how!r}")
    pick = np.unique(np.linspace(0, len(videos) - 1, min(max_videos, len(videos))).round().astype(int))
    mean, std = {}, {}
    for stream in streams:
        total = total_sq = count = 0
        for i in pick:
            video = videos[i]
            cube = reader.frames(video, stream, 0, video.n_frames).astype(np.float64)  # (T, C, K, K)
            total = total + cube.sum((0, 2, 3))
            total_sq = total_sq + np.square(cube).sum((0, 2, 3))
            count += cube.shape[0] * cube.shape[2] * cube.shape[3]
        m = total / count if how == "mean_std" else np.zeros_like(total / count)
        s = np.sqrt(np.maximum(total_sq / count - m * m, 0.0))  # (C,); rms where m = 0
        mean[stream] = m.astype(np.float32)
        std[stream] = np.where(s > 1e-6 * max(float(s.max()), 1e-12), s, 1.0).astype(np.float32)
    return Normalization(mean, std)


def targets_for(videos: Sequence[Video], classes: int, multi_label: bool) -> torch.Tensor:
    """(N,) class indices, or (N, classes) multi-hot float targets for a multi-label dataset."""
    if not multi_label:
        return torch.tensor([v.label for v in videos], dtype=torch.long)
    hot = torch.zeros(len(videos), classes)
    for i, v in enumerate(videos):
        hot[i, list(v.labels)] = 1.0
    return hot


class ClipDataset(Dataset):
    """What the batches of a run are made of: a reader, the videos, their streams, targets and standardization.

    Batches stay float16 on their way from the reader (half the bytes to copy); :func:`model_inputs`
    makes them float32 and standardizes them on the training device. ``clip`` is the run's policy.
    """

    def __init__(self, reader: FeatureReader, videos: Sequence[Video], streams: Sequence[str], clip: Policy,
                 targets: torch.Tensor, normalization: Normalization | None) -> None:
        self.reader, self.videos, self.streams, self.clip = reader, list(videos), tuple(streams), clip
        self.targets, self.normalization = targets, normalization

    def __len__(self) -> int:
        return len(self.videos)

    def cubes(self, video: Video, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The streams of ``video`` at ``indices``, each (len, C, K, K) float16 as stored (see :func:`model_inputs`)."""
        return tuple(torch.from_numpy(np.ascontiguousarray(self.reader.read(video, s, indices)))
                     for s in self.streams)

    def frame_bytes(self) -> int:
        """Bytes of one frame of every stream, as held in memory (float16)."""
        return sum(2 * int(np.prod(self.reader.frame_shape(self.videos[0], s))) for s in self.streams)

    def __getitem__(self, ranges: tuple[tuple[int, int, int], ...]) -> tuple[torch.Tensor, ...]:
        """One plan group's frames: per stream one (frames, C, K, K) float16 tensor holding, range after range,
        the frames lo..hi-1 of each (video index, lo, hi), each frame read once.

        In a DataLoader worker the tensors are in shared memory, which they travel in without another copy.
        """
        shared = get_worker_info() is not None
        total = sum(hi - lo for _, lo, hi in ranges)
        out = []
        for s in self.streams:
            shape = self.reader.frame_shape(self.videos[ranges[0][0]], s)
            frames = torch.empty((total, *shape), dtype=torch.float16)  # (frames, C, K, K)
            if shared:
                frames.share_memory_()
            target, at = frames.numpy(), 0
            for i, lo, hi in ranges:
                self.reader.read_into(self.videos[i], s, lo, hi, target[at : at + hi - lo])
                at += hi - lo
            out.append(frames)
        return tuple(out)


class VideoDataset(ClipDataset):
    """Whole videos for evaluation: item i -> (stream cubes (clips, T, C, K, K) float16, target, i)."""

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, int]:
        video = self.videos[index]
        clips = self.clip.cover(video.n_frames)  # (clips, T)
        flat = self.cubes(video, clips.reshape(-1))  # each (clips*T, C, K, K)
        shaped = tuple(c.view(*clips.shape, *c.shape[1:]) for c in flat)  # each (clips, T, C, K, K)
        return shaped, self.targets[index], index


def model_inputs(cubes: Sequence[torch.Tensor], dataset: ClipDataset, device: str | torch.device) -> list:
    """A batch's float16 cubes, one per stream, as the model takes them: on ``device``, float32, standardized."""
    norm = dataset.normalization
    moved = [c.to(device, non_blocking=True) for c in cubes]  # each (B, T, C, K, K) float16
    if norm is None:
        return [c.float() for c in moved]
    return [norm.standardize(s, c) for s, c in zip(dataset.streams, moved, strict=True)]
