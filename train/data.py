"""Reading clips from a store fast enough for training: one reader per process, an optional RAM cache,
per-channel standardization, and the datasets and DataLoaders of a run.

Only the frames a clip needs are read (``frames=slice`` touches only their chunks). The Zarr arrays
of each video are opened once per process and kept; DataLoader workers are started with "spawn"
(fork can hang with some zarr and PyAV builds) and each opens the store itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from glimpse.store import Store, open_store
from glimpse.store.layout import VIDEOS_GROUP
from glimpse.store.verify import stream_array
from glimpse.train.clips import Clip, Video, epoch_plan
from torch.utils.data import DataLoader, Dataset, Sampler

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
    """Reads frames of one video's streams; opens the store and each array once per process.

    ``cache`` maps (video key, stream) to the whole float16 array, when the run holds the store in RAM.
    Pickling (to a spawned worker) drops the open handles; the worker opens its own.
    """

    def __init__(self, path: str, cache: dict[tuple[str, str], np.ndarray] | None = None) -> None:
        self.path = path
        self.cache = cache
        self._store: Store | None = None
        self._arrays: dict[tuple[str, str], object] = {}

    def __getstate__(self) -> dict:
        return {"path": self.path, "cache": self.cache, "_store": None, "_arrays": {}}

    def array(self, key: str, stream: str):
        """The video's array of ``stream``: the cached numpy array or the Zarr array (opened once)."""
        if self.cache is not None:
            return self.cache[(key, stream)]
        found = self._arrays.get((key, stream))
        if found is None:
            if self._store is None:
                self._store = open_store(self.path)
            found = self._store.root[f"{VIDEOS_GROUP}/{key}/{stream}"]
            self._arrays[(key, stream)] = found
        return found

    def read(self, video: Video, stream: str, indices: np.ndarray) -> np.ndarray:
        """(len(indices), C, K, K) float16: the frames at ``indices`` (sorted, repeats allowed)."""
        array = self.array(video.key, stream)
        last = array.shape[0] - 1
        indices = np.minimum(indices, last)  # a stream one frame shorter than n_frames repeats its last frame
        lo, hi = int(indices.min()), int(indices.max()) + 1
        block = np.asarray(array[lo:hi])  # (hi - lo, C, K, K): only the chunks these frames are in
        return block[indices - lo]


def unfit_videos(store: Store, videos: Sequence[Video], streams: Sequence[str]) -> dict[str, str]:
    """Video id -> why its arrays of ``streams`` do not fit the store's metadata; empty for a sound store.

    Only metadata is read, no chunk: a video whose array metadata lies about its shape (or whose n_frames
    does not match its arrays) is found before training instead of failing deep inside a DataLoader.
    Each one is logged as a warning ("skipped video ..."): the callers leave it out.
    ``python -m glimpse.store verify`` also reads the data back.
    """
    unfit = {}
    for video in videos:
        problems = [p for s in streams for p in stream_array(store.root, video.key, s, store.streams[s],
                                                             video.n_frames)[1]]
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
    reader = FeatureReader(store.path)
    cache = {(v.key, s): np.asarray(reader.array(v.key, s)[:]) for v in videos for s in streams}
    log.info("cache: %d videos (%.2f GB) held in RAM", len(videos), need / 2**30)
    return cache


@dataclass(frozen=True)
class Normalization:
    """Per-channel standardization of each stream: (x - mean) / std, from the training videos."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    def standardize(self, stream: str, x: torch.Tensor) -> torch.Tensor:
        """(..., C, K, K) float16 tensor -> float32 standardized, computed on the tensor's device."""
        mean = torch.from_numpy(self.mean[stream]).to(x.device)[:, None, None]  # (C, 1, 1)
        scale = torch.from_numpy(1.0 / self.std[stream]).to(x.device)[:, None, None]  # (C, 1, 1)
        return (x.float() - mean) * scale

    def to_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors only (what a checkpoint loaded with weights_only=True can hold)."""
        return {s: {"mean": torch.from_numpy(self.mean[s]), "std": torch.from_numpy(self.std[s])} for s in self.mean}

    @classmethod
    def from_state(cls, state: dict | None) -> Normalization | None:
        """The inverse of :meth:`to_state`; None stays None (a run without standardization)."""
        if not state:
            return None
        return cls({s: v["mean"].numpy() for s, v in state.items()}, {s: v["std"].numpy() for s, v in state.items()})


def compute_normalization(reader: FeatureReader, videos: Sequence[Video], streams: Sequence[str],
                          max_videos: int) -> Normalization:
    """Mean and std per channel over every frame and position of up to ``max_videos`` evenly spread videos.

    A channel that never varies (a dead unit of a random network) gets std 1, so it stays zero.
    """
    pick = np.unique(np.linspace(0, len(videos) - 1, min(max_videos, len(videos))).round().astype(int))
    mean, std = {}, {}
    for stream in streams:
        total = total_sq = count = 0
        for i in pick:
            cube = reader.array(videos[i].key, stream)[:].astype(np.float64)  # (T, C, K, K)
            total = total + cube.sum((0, 2, 3))
            total_sq = total_sq + np.square(cube).sum((0, 2, 3))
            count += cube.shape[0] * cube.shape[2] * cube.shape[3]
        m = total / count
        s = np.sqrt(np.maximum(total_sq / count - m * m, 0.0))
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
    """Training clips: item (video index, start) -> (stream cubes, each (T, C, K, K) float16, target).

    Batches stay float16 on their way from the workers (half the bytes to copy); :func:`model_inputs`
    makes them float32 and standardizes them on the training device.
    """

    def __init__(self, reader: FeatureReader, videos: Sequence[Video], streams: Sequence[str], clip: Clip,
                 targets: torch.Tensor, normalization: Normalization | None) -> None:
        self.reader, self.videos, self.streams, self.clip = reader, list(videos), tuple(streams), clip
        self.targets, self.normalization = targets, normalization

    def __len__(self) -> int:
        return len(self.videos)

    def cubes(self, video: Video, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The streams of ``video`` at ``indices``, each (T, C, K, K) float16 as stored (see :func:`model_inputs`)."""
        return tuple(torch.from_numpy(self.reader.read(video, s, indices)) for s in self.streams)

    def __getitem__(self, item: tuple[int, int]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        index, start = item
        video = self.videos[index]
        return self.cubes(video, self.clip.indices(video.n_frames, start)), self.targets[index]


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


class EpochSampler(Sampler):
    """Yields the (video index, start) items of one epoch's plan; :meth:`set_epoch` before each epoch.

    ``skip`` leaves out the first items (those a resumed run already trained on in this epoch).
    """

    def __init__(self, videos: Sequence[Video], clip: Clip, seed: int) -> None:
        self.videos, self.clip, self.seed = list(videos), clip, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(epoch_plan(self.videos, self.clip, self.seed, self.epoch)[self.skip :])

    def __len__(self) -> int:
        return max(len(self.videos) - self.skip, 0)


def make_loader(dataset: Dataset, *, batch_size: int | None, sampler: Sampler | None, workers: int) -> DataLoader:
    """A DataLoader whose workers (if any) are spawned and kept for the whole run."""
    extra = {"multiprocessing_context": "spawn", "persistent_workers": True, "prefetch_factor": 4} if workers else {}
    # its own generator: creating an iterator must not draw from the global torch RNG (dropout's), or a
    # run resumed inside an epoch would see other dropout masks than the uninterrupted one
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), **extra)
