"""The video-major epoch loader of a training run: batches of clips as the frames they come from and each clip's rows.

Which clips an epoch holds is train/sampling.py's plan; reading them is train/data.py's datasets. A plan group (the
shuffle buffer: as many videos as :data:`SHUFFLE_BYTES` of frames hold, unless a run caps it in videos) is read
into one tensor per stream, each frame once, and moved to the training device once; a batch is that tensor and
the rows of its clips' frames, and :meth:`Batch.cubes` gathers the clips where the frames are (on a GPU, in device
memory), so the host copies each frame once per epoch instead of once per clip that holds it. Groups are read ahead
(in a thread, or in spawned DataLoader workers), and on a GPU batches are made ahead of the step in another thread.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glimpse.train.data import ClipDataset
from glimpse.train.sampling import Group, Policy, epoch_plan, items_per_epoch

#: The shuffle buffer's size: the frames of a plan group (every stream, float16) held at once, on the host and on
#: the training device. A training set this small is one group, whose clips are shuffled all together (the
#: released code's full shuffle); a larger one is split into groups of as many videos as it holds.
SHUFFLE_BYTES = 2**30


class GroupSampler(Sampler):
    """Yields the frame ranges of the groups the loader reads this epoch (from the resume point) to the reader."""

    def __init__(self, loader: EpochLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[tuple[int, int, int], ...]]:
        return iter(list(self.loader.reading))

    def __len__(self) -> int:
        return len(self.loader.reading)


class Buffers:
    """Reused output tensors of the gathers: a fresh 50 MB tensor per batch costs more in page faults than filling
    it. A buffer is handed out again once nobody holds it (the step is done with its batch)."""

    def __init__(self, keep: int) -> None:
        self.keep, self.ring = keep, {}

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        ring = self.ring.setdefault((shape, dtype, device), [])
        for tensor in ring:
            if sys.getrefcount(tensor) <= 3:  # the ring, this loop and getrefcount's argument: free again
                return tensor
        tensor = torch.empty(shape, dtype=dtype, device=device)
        if len(ring) < self.keep:
            ring.append(tensor)
        return tensor


@dataclass(frozen=True)
class Batch:
    """One training batch as frames and rows: ``parts`` (per stream the (N, C, K, K) frames of a plan group, (b, T)
    rows of those frames, one per clip), usually one part, two where the batch spans two groups; ``target`` (B,)
    class indices or (B, classes) multi-hot; ``videos`` (B,) the index of each clip's video in the dataset."""

    parts: tuple[tuple[tuple[torch.Tensor, ...], torch.Tensor], ...]
    target: torch.Tensor
    videos: np.ndarray
    buffers: Buffers

    def cubes(self) -> tuple[torch.Tensor, ...]:
        """(B, T, C, K, K) float16 per stream: the clips gathered where the frames are (on the training device)."""
        out = []
        for s in range(len(self.parts[0][0])):
            frames = self.parts[0][0][s]
            T = self.parts[0][1].shape[1]
            cube = self.buffers.empty((len(self.videos) * T, *frames.shape[1:]), frames.dtype, frames.device)
            at = 0
            for group, rows in self.parts:
                torch.index_select(group[s], 0, rows.reshape(-1), out=cube[at : at + rows.numel()])
                at += rows.numel()
            out.append(cube.view(len(self.videos), T, *frames.shape[1:]))
        return tuple(out)


#: Batches the epoch loader makes ahead of a GPU training step, in its own thread. On the CPU it makes them between
#: steps: a second Python thread costs small models more in GIL hand-offs than the overlap gains (a softattn run of
#: 480 steps took 13.2-15.9 s with it, 11.1-12.5 s without).
BATCHES_AHEAD = 1


def in_background(items: Iterator, depth: int) -> Iterator:
    """Yield what ``items`` yields, computed in a thread up to ``depth`` items ahead; its exception is raised here.

    When the consumer stops early (a break, an exception in the loop body), the thread stops after the item it is
    on and ``items`` is closed there.
    """
    ready: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer, which raises it with its traceback
            put((end, exc))
        finally:
            items.close()

    worker = threading.Thread(target=produce, name="glimpse-batches", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
            del item  # the batch's buffer is free for reuse once the step is done with it
    finally:
        stop.set()
        worker.join()


class EpochLoader:
    """Training batches of one epoch at a time, video-major: each video's frames are read once per epoch (one call
    per plan group and stream, in a worker when there are workers), moved to ``device`` once, and every clip of
    the group is batched as rows of them (see the module docstring).

    Iterating yields :class:`Batch` es. With ``ahead`` (training on a GPU: :data:`BATCHES_AHEAD`), groups are moved
    and batches made in a thread that many batches ahead of the consumer, so that the step never waits on them,
    only on reading when the store is slower than the model. ``videos`` caps a group in videos (0: as many as
    ``buffer_bytes`` of frames hold). Call :meth:`set_epoch` before each epoch; ``skip`` leaves out the first clips
    (those a resumed run already trained on). A group whose frame ranges are those of the last group (a training
    set that is one group, read whole) is not read again.
    """

    def __init__(self, dataset: ClipDataset, policy: Policy, *, seed: int, batch_size: int, workers: int,
                 videos: int = 0, buffer_bytes: int = SHUFFLE_BYTES, device: str | torch.device = "cpu",
                 ahead: int = 0) -> None:
        self.dataset, self.policy, self.seed, self.batch_size = dataset, policy, seed, batch_size
        self.videos, self.device, self.ahead = videos, torch.device(device), ahead
        self.frames = 0 if videos else max(buffer_bytes // dataset.frame_bytes(), 1)  # frames a group holds
        self.n_frames = [v.n_frames for v in dataset.videos]
        self.items = items_per_epoch(self.n_frames, policy)
        self.epoch, self.skip = 0, 0
        self.buffers = Buffers(ahead + 2)  # one for the step, ``ahead`` waiting, one being gathered
        self.held: tuple[tuple, tuple[torch.Tensor, ...]] | None = None  # (ranges, frames) of the last group
        self.reading: list[tuple] = []  # the ranges the reader reads this epoch
        self.workers = workers
        self.reader = (make_loader(dataset, batch_size=None, sampler=GroupSampler(self), workers=workers, prefetch=1)
                       if workers else None)

    @property
    def batches(self) -> int:
        """Batches in one whole epoch."""
        return math.ceil(self.items / self.batch_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def plan(self, epoch: int) -> list[Group]:
        """The plan groups of ``epoch``."""
        return epoch_plan(self.n_frames, self.policy, self.seed, epoch, videos=self.videos, frames=self.frames)

    def remaining(self) -> list[tuple[Group, int]]:
        """(plan group, clips of it to skip) for the groups of this epoch not yet trained on."""
        left, out = self.skip, []
        for g in self.plan(self.epoch):
            if left >= len(g.items):
                left -= len(g.items)
                continue
            out.append((g, left))
            left = 0
        return out

    def mix(self, epoch: int) -> tuple[float, float]:
        """(median distinct videos, median distinct classes) of the batches of ``epoch``."""
        items = np.concatenate([g.items for g in self.plan(epoch)])
        targets = self.dataset.targets
        videos, classes = [], []
        for lo in range(0, len(items), self.batch_size):
            batch = np.unique(items[lo : lo + self.batch_size])
            videos.append(len(batch))
            labels = targets[torch.from_numpy(batch)]  # (b,) classes, or (b, classes) multi-hot
            classes.append(int((labels.sum(0) > 0).sum()) if labels.ndim == 2 else len(labels.unique()))
        return float(np.median(videos)), float(np.median(classes))

    def __len__(self) -> int:
        return max(math.ceil((self.items - self.skip) / self.batch_size), 0)

    def __iter__(self) -> Iterator[Batch]:
        return in_background(self.cut(), self.ahead) if self.ahead else self.cut()

    def cut(self) -> Iterator[Batch]:
        """The epoch's batches (from the resume point), made from the groups' frames in the calling thread."""
        B = self.batch_size
        parts: list[tuple[tuple[torch.Tensor, ...], np.ndarray, np.ndarray]] = []  # (frames, rows, videos)
        filled = 0
        plan = self.remaining()
        for (group, skip), frames in zip(plan, self.groups(plan), strict=True):
            rows = group.rows()  # (clips, T)
            at = skip
            while at < len(group.items):
                take = min(B - filled, len(group.items) - at)
                parts.append((frames, rows[at : at + take], group.items[at : at + take]))
                at, filled = at + take, filled + take
                if filled == B:
                    yield self.batch(parts)
                    parts, filled = [], 0
        if parts:
            yield self.batch(parts)

    def batch(self, parts: list[tuple[tuple[torch.Tensor, ...], np.ndarray, np.ndarray]]) -> Batch:
        """One :class:`Batch` of ``parts``, its rows on the frames' device."""
        videos = np.concatenate([v for *_, v in parts])
        moved = tuple((frames, torch.from_numpy(rows).to(self.device, non_blocking=True)) for frames, rows, _ in parts)
        return Batch(moved, self.dataset.targets[torch.from_numpy(videos)], videos, self.buffers)

    def groups(self, plan: list[tuple[Group, int]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """The frames of ``plan``'s groups (this epoch's :meth:`remaining`) on the device, in order: the last group
        held again when it is the first, the others from the workers, or, without workers, read in a background
        thread one group ahead (decoding releases the GIL, so it overlaps the steps)."""
        ranges = [g.ranges for g, _ in plan]
        kept = self.held[1] if ranges and self.held is not None and self.held[0] == ranges[0] else None
        self.held = None  # not kept while the next groups are read
        self.reading = ranges[1:] if kept is not None else ranges
        read = self.read(self.reading)
        for i, r in enumerate(ranges):
            frames = kept if i == 0 and kept is not None else tuple(f.to(self.device) for f in next(read))
            self.held = (r, frames)
            yield frames

    def read(self, ranges: list[tuple]) -> Iterator[tuple[torch.Tensor, ...]]:
        """The frames of each of ``ranges`` (the groups' ranges), in order, read ahead."""
        if self.reader is not None:
            yield from self.reader
            return
        if not ranges:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="glimpse-prefetch") as ahead:
            pending = ahead.submit(self.dataset.__getitem__, ranges[0])
            for nxt in [*ranges[1:], None]:
                frames = pending.result()
                if nxt is not None:
                    pending = ahead.submit(self.dataset.__getitem__, nxt)
                yield frames

def make_loader(dataset: Dataset, *, batch_size: int | None, sampler: Sampler | None, workers: int,
                prefetch: int = 4) -> DataLoader:
    """A DataLoader whose workers (if any) are spawned and kept for the whole run."""
    extra = ({"multiprocessing_context": "spawn", "persistent_workers": True, "prefetch_factor": prefetch}
             if workers else {})
    # its own generator: creating an iterator must not draw from the global torch RNG (dropout's), or a
    # run resumed inside an epoch would see other dropout masks than the uninterrupted one
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), **extra)
