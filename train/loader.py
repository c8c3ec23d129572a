"""The video-major epoch loader of a training run: batches of clips cut from each video's frames, read once per epoch.

Which clips an epoch holds is train/sampling.py's plan; reading them is train/data.py's datasets. Groups of
videos are read ahead (in a thread, or in spawned DataLoader workers), and on a GPU batches are cut ahead of
the step in another thread.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glimpse.train.data import ClipDataset
from glimpse.train.sampling import Policy, epoch_plan, items_per_epoch


class GroupSampler(Sampler):
    """Yields the frame ranges of the current epoch's plan groups (from the resume point) to the reader."""

    def __init__(self, loader: EpochLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[tuple[int, int, int], ...]]:
        return iter([g.ranges for g, _ in self.loader.remaining()])

    def __len__(self) -> int:
        return len(self.loader.remaining())


#: Batches the epoch loader cuts ahead of a GPU training step, in its own thread. On the CPU it cuts them between
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
    """Training batches of one epoch at a time, video-major: each video's frames are read once per epoch
    (one call per video and stream, in a worker when there are workers) and cut into all its clips.

    Iterating yields (cubes, targets): cubes one (B, T, C, K, K) float16 tensor per stream. With ``ahead``
    (training on a GPU: :data:`BATCHES_AHEAD`), batches are cut in a thread that many batches ahead of the
    consumer, so that the step never waits on copying clips, only on reading when the store is slower than
    the model. Call :meth:`set_epoch` before each epoch; ``skip`` leaves out the first clips (those a resumed
    run already trained on). ``pin`` builds batches in pinned memory, for non-blocking copies to a GPU.
    """

    def __init__(self, dataset: ClipDataset, policy: Policy, *, seed: int, batch_size: int, workers: int,
                 group: int = 8, pin: bool = False, ahead: int = 0) -> None:
        self.dataset, self.policy, self.seed, self.batch_size = dataset, policy, seed, batch_size
        self.group, self.pin, self.ahead = group, pin, ahead
        self.n_frames = [v.n_frames for v in dataset.videos]
        self.items = items_per_epoch(self.n_frames, policy)
        self.epoch, self.skip = 0, 0
        self._ring: dict[tuple, list[torch.Tensor]] = {}
        self.workers = workers
        self.reader = (make_loader(dataset, batch_size=None, sampler=GroupSampler(self), workers=workers, prefetch=2)
                       if workers else None)

    @property
    def batches(self) -> int:
        """Batches in one whole epoch."""
        return math.ceil(self.items / self.batch_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def remaining(self) -> list[tuple[object, int]]:
        """(plan group, clips of it to skip) for the groups of this epoch not yet trained on."""
        left, out = self.skip, []
        for g in epoch_plan(self.n_frames, self.policy, self.seed, self.epoch, self.group):
            if left >= len(g.items):
                left -= len(g.items)
                continue
            out.append((g, left))
            left = 0
        return out

    def __len__(self) -> int:
        return max(math.ceil((self.items - self.skip) / self.batch_size), 0)

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        return in_background(self.cut(), self.ahead) if self.ahead else self.cut()

    def cut(self) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """The epoch's batches (from the resume point), cut from the groups' frames in the calling thread."""
        B, targets, streams = self.batch_size, self.dataset.targets, len(self.dataset.streams)
        pending: list[tuple[list, int, np.ndarray, int]] = []  # (group frames, video slot, clip in its range, video)
        plan = self.remaining()
        for (group, skip), frames in zip(plan, self.groups(plan), strict=True):
            slot = {i: j for j, (i, _, _) in enumerate(group.ranges)}
            starts = {i: lo for i, lo, _ in group.ranges}
            for video, clip in zip(group.items[skip:], group.clips[skip:], strict=True):
                pending.append((frames, slot[int(video)], clip - starts[int(video)], int(video)))
                if len(pending) == B:
                    yield self.batch(pending, streams, targets)
                    pending = []
        if pending:
            yield self.batch(pending, streams, targets)

    def groups(self, plan: list[tuple[object, int]]) -> Iterator[tuple[list[torch.Tensor], ...]]:
        """The frames of ``plan``'s groups (this epoch's :meth:`remaining`), in order: from the workers, or, without
        workers, read in a background thread one group ahead (decoding releases the GIL, so it overlaps the step)."""
        if self.workers:
            yield from self.reader
            return
        ranges = [g.ranges for g, _ in plan]
        with ThreadPoolExecutor(1, thread_name_prefix="glimpse-prefetch") as ahead:
            pending = ahead.submit(self.dataset.__getitem__, ranges[0]) if ranges else None
            for nxt in [*ranges[1:], None]:
                frames = pending.result()
                pending = ahead.submit(self.dataset.__getitem__, nxt) if nxt is not None else None
                yield frames

    def batch(self, pending: list, streams: int, targets: torch.Tensor
              ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Gather the clips of ``pending`` into one (B, T, C, K, K) tensor per stream."""
        out = []
        for s in range(streams):
            first = pending[0][0][s][pending[0][1]]  # (frames, C, K, K)
            cube = self.buffer(s, (len(pending), len(pending[0][2]), *first.shape[1:]), first.dtype)  # (B, T, C, K, K)
            target = cube.numpy()  # numpy copies float16 ~10x faster than Tensor.copy_ on CPU
            for j, (frames, slot, index, _) in enumerate(pending):
                source = frames[s][slot].numpy()  # (frames, C, K, K)
                lo, hi = int(index[0]), int(index[-1]) + 1
                if hi <= len(source) and hi - lo == len(index) and (np.diff(index) == 1).all():
                    np.copyto(target[j], source[lo:hi])  # T consecutive frames: one memory copy
                else:
                    np.take(source, np.minimum(index, len(source) - 1), axis=0, out=target[j])
            out.append(cube)
        return tuple(out), targets[[video for *_, video in pending]]


    def buffer(self, stream: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An empty batch tensor: pinned (torch caches those), or on the CPU one of a few reused buffers that
        nobody holds any more (a fresh 50 MB tensor costs more in page faults than filling it): one for the
        step, ``ahead`` waiting, one being cut."""
        if self.pin:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        ring = self._ring.setdefault((stream, shape, dtype), [])
        for tensor in ring:
            if sys.getrefcount(tensor) <= 3:  # the ring, this loop and getrefcount's argument: free again
                return tensor
        tensor = torch.empty(shape, dtype=dtype)
        if len(ring) < self.ahead + 2:
            ring.append(tensor)
        return tensor


def make_loader(dataset: Dataset, *, batch_size: int | None, sampler: Sampler | None, workers: int,
                prefetch: int = 4) -> DataLoader:
    """A DataLoader whose workers (if any) are spawned and kept for the whole run."""
    extra = ({"multiprocessing_context": "spawn", "persistent_workers": True, "prefetch_factor": prefetch}
             if workers else {})
    # its own generator: creating an iterator must not draw from the global torch RNG (dropout's), or a
    # run resumed inside an epoch would see other dropout masks than the uninterrupted one
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), **extra)
