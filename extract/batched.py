"""The pipelined extraction inside one worker: decode threads feed fixed-size batches that span videos.

One Dask task extracts a group of videos (:func:`extract_pipelined`). A few decode threads claim,
decode, sample and resize each video (PyAV and OpenCV release the GIL; TV-L1 and Farneback flow run
there too) and put its frames, in pieces of at most one batch, on a bounded queue. The task's own
thread takes the pieces off and runs the CNN, and RAFT, on batches of exactly ``batch_size`` that
may hold frames of several videos; short batches are padded, so a frame's features do not depend
on its batch-mates and the store equals the sequential path's. RAFT's output feeds the flow-stream
CNN on the device. When every frame of a video is back, a writer thread writes the video exactly
as the sequential path does (all of its data first, "done" last) and drops its claim.

A video that fails (cannot be decoded, too short, ...) fails alone with its reason: its frames
never enter a batch, or are skipped if already queued; the other videos are not touched.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from glimpse.extract.flow import FlowEstimator, flow_to_image
from glimpse.extract.pipeline import CLAIMED, SKIPPED, ExtractConfig, Extractor, Runtime, failure_reason
from glimpse.store import StoreWriter
from glimpse.store.claims import claim_video
from glimpse.store.layout import video_key
from glimpse.store.schema import DONE, FAILED

#: Pieces (at most one batch of frames each) waiting between the decode threads and the device: the
#: bound that keeps memory flat however many videos a group holds.
QUEUE_PIECES = 8

_END = object()


class _Aborted(Exception):
    """The task's own thread stopped: decode threads give up their videos (claims released)."""


@dataclass(eq=False)
class Flight:
    """One video between its claim and its write."""

    record: dict[str, Any]
    claim: ExitStack
    result: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    missing: int = 0  # frames, over every stream, whose outputs have not come back yet
    error: str | None = None

    @property
    def key(self) -> str:
        return video_key(self.record["id"])

    def outcome(self, status: str) -> dict[str, Any]:
        frames = self.result.get("n_frames", 0) if status == DONE else 0
        return {"id": self.record["id"], "status": status, "error": self.error, "frames": frames}


class Batcher:
    """Pieces of several videos' frames run through one model in batches of exactly ``size`` frames.

    ``run`` maps a batch's tensors, each (n, ...) with n <= size, to outputs (n, ...); ``done`` gets
    each piece's share back as (flight, first frame, outputs); ``fail`` gets the flights of a batch
    whose run raised, with the exception.
    """

    def __init__(self, size: int, run: Callable, done: Callable, fail: Callable) -> None:
        self.size, self.run, self.done, self.fail = size, run, done, fail
        self.pieces: list[tuple[Flight, int, tuple[torch.Tensor, ...]]] = []
        self.count = 0

    def add(self, flight: Flight, start: int, *tensors: torch.Tensor) -> None:
        """Queue frames ``start, start + 1, ...`` of ``flight``; run every batch that is full."""
        self.pieces.append((flight, start, tensors))
        self.count += len(tensors[0])
        while self.count >= self.size:
            self._step()

    def flush(self) -> None:
        """Run what is left (the last batch padded by the model)."""
        while self.count:
            self._step()

    def _step(self) -> None:
        taken, n = [], 0
        while n < self.size and self.pieces:
            flight, start, tensors = self.pieces.pop(0)
            k = min(len(tensors[0]), self.size - n)
            if k < len(tensors[0]):  # the rest of the piece opens the next batch
                self.pieces.insert(0, (flight, start + k, tuple(t[k:] for t in tensors)))
                tensors = tuple(t[:k] for t in tensors)
            taken.append((flight, start, tensors))
            n += k
        self.count -= n
        live = [piece for piece in taken if piece[0].error is None]  # frames of failed videos are dropped
        if not live:
            return
        try:
            out = self.run(*(torch.cat([p[2][i] for p in live]) for i in range(len(live[0][2]))))  # (b, ...)
        except Exception as exc:
            for flight, _, _ in live:
                self.fail(flight, exc)
            return
        offset = 0
        for flight, start, tensors in live:
            k = len(tensors[0])
            self.done(flight, start, out[offset : offset + k])
            offset += k


class Pipeline:
    """Decode threads -> bounded queue -> batched models on the task's thread -> writer thread."""

    def __init__(self, store_path: str, config: ExtractConfig, runtime: Runtime, writer: StoreWriter,
                 extractor: Extractor) -> None:
        self.store_path, self.config, self.runtime, self.writer, self.x = store_path, config, runtime, writer, extractor
        self.checker, self.check_lock = StoreWriter(store_path), threading.Lock()  # status reads of decode threads
        self.work: queue.Queue = queue.Queue(QUEUE_PIECES)
        self.finished: queue.Queue = queue.Queue(QUEUE_PIECES)
        self.outcomes: list[dict[str, Any]] = []
        self.local = threading.local()  # per decode thread: its own OpenCV flow estimator (TV-L1 is stateful)
        self.abort = threading.Event()
        self.flights: set[Flight] = set()  # claimed and not yet released
        size = runtime.batch_size
        self.raft = extractor.flow is not None and extractor.flow.method == "raft"
        self.batchers = {"rgb": Batcher(size, lambda x: extractor.backbone.fixed_batch(x, size),
                                        self._cnn_done("rgb"), self._fail)}
        if extractor.flow is not None:
            self.batchers["flow_cnn"] = Batcher(size, lambda x: extractor.flow_backbone.fixed_batch(x, size),
                                                self._cnn_done("flow_cnn"), self._fail)
        self.raft_batchers: dict[tuple[int, int], Batcher] = {}  # one per flow size: a batch holds one size

    def run(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Extract ``records``; one outcome per video."""
        if not records:
            return []
        writer_thread = threading.Thread(target=self._write_loop, name="glimpse-writer", daemon=True)
        writer_thread.start()
        left, lock = [len(records)], threading.Lock()

        def job(record: dict[str, Any]) -> None:
            try:
                self._decode(record)
            finally:
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    self._put(_END, final=True)

        pool = ThreadPoolExecutor(max(1, self.runtime.decode_threads), thread_name_prefix="glimpse-decode")
        try:
            for record in records:
                pool.submit(job, record)
            while (item := self.work.get()) is not _END:
                kind, flight, *rest = item
                if kind == "fail":
                    self._fail(flight, rest[0])
                elif flight.error is None:
                    self._batcher(kind, flight).add(flight, *rest)
            for batcher in [*self.raft_batchers.values(), *self.batchers.values()]:  # RAFT first: it feeds flow_cnn
                batcher.flush()
        finally:
            self.abort.set()
            pool.shutdown(wait=True)
            self.finished.put(_END)
            writer_thread.join()
            for flight in list(self.flights):  # only after an error of the task's own: nothing may stay claimed
                self.release(flight)
        return self.outcomes

    # ------------------------------------------------------------------------------------ decode threads

    def _put(self, item: Any, final: bool = False) -> None:
        while True:
            try:
                return self.work.put(item, timeout=0.1)
            except queue.Full:
                if self.abort.is_set():
                    if final:
                        return
                    raise _Aborted from None

    def _decode(self, record: dict[str, Any]) -> None:
        flight = Flight(record, ExitStack())
        try:
            if not flight.claim.enter_context(claim_video(self.store_path, flight.key, note=record["id"])):
                flight.claim.close()  # another run is writing this video right now
                self.outcomes.append(flight.outcome(CLAIMED))
                return
            self.flights.add(flight)
            with self.check_lock:
                finished = self.checker.status(flight.key) == DONE
            if finished:  # another run finished it while this task waited
                self.release(flight)
                self.outcomes.append(flight.outcome(SKIPPED))
                return
            try:
                self._feed(flight)
            except _Aborted:
                raise
            except Exception as exc:  # this video fails alone; pieces already queued are dropped
                self._put(("fail", flight, failure_reason(exc, record["path"])))
        except _Aborted:
            self.release(flight)

    def _feed(self, flight: Flight) -> None:
        """Decode one video and queue its pieces: rgb frames, and flow images or RAFT pairs."""
        x, size = self.x, self.runtime.batch_size
        video, flight.result = x.decode(flight.record, self.config)
        n = len(video.indices)
        flight.arrays["rgb"] = np.empty((n, x.backbone.spec.channels, x.backbone.grid, x.backbone.grid), np.float32)
        flow = first = second = None
        if x.flow is not None:
            first, second = x.flow.prepare(video.flow_from, video.flow_to)  # (T, h, w, 3)
            flight.result["flow_computed_at"] = list(first.shape[1:3])
            flight.arrays["flow_cnn"] = np.empty_like(flight.arrays["rgb"])
            if self.raft:
                flight.arrays["flow"] = np.empty((n, 2, *first.shape[1:3]), np.float32)
            else:
                flow = flight.arrays["flow"] = self._opencv().opencv(first, second)  # (T, 2, h, w)
        flight.missing = n * (1 + (x.flow is not None) + self.raft)
        for start in range(0, n, size):
            self._put(("rgb", flight, start, x.backbone.preprocess(video.frames[start : start + size])))
        if flow is not None:
            images = flow_to_image(flow)  # (T, h, w, 3)
            for start in range(0, n, size):
                self._put(("flow_cnn", flight, start, x.flow_backbone.preprocess(images[start : start + size])))
        elif self.raft:
            step = x.flow.batch_size
            for start in range(0, n, step):
                pair = (torch.from_numpy(frames[start : start + step]) for frames in (first, second))
                self._put(("raft", flight, start, *pair))

    def _opencv(self) -> FlowEstimator:
        if getattr(self.local, "flow", None) is None:
            self.local.flow = FlowEstimator(self.config.flow, size=self.config.flow_size)
        return self.local.flow

    # ------------------------------------------------------------------------------------ the task's thread

    def _batcher(self, kind: str, flight: Flight) -> Batcher:
        if kind != "raft":
            return self.batchers[kind]
        shape = tuple(flight.arrays["flow"].shape[-2:])
        if shape not in self.raft_batchers:
            self.raft_batchers[shape] = Batcher(self.x.flow.batch_size, self.x.flow.raft, self._raft_done, self._fail)
        return self.raft_batchers[shape]

    def _cnn_done(self, stream: str) -> Callable:
        def done(flight: Flight, start: int, features: torch.Tensor) -> None:
            flight.arrays[stream][start : start + len(features)] = features.cpu().numpy()  # (b, C, K, K)
            self._arrived(flight, len(features))

        return done

    def _raft_done(self, flight: Flight, start: int, flow: torch.Tensor) -> None:
        """RAFT's flow (b, 2, h, w), still on the device, goes on into the flow-stream CNN from there."""
        flight.arrays["flow"][start : start + len(flow)] = flow.cpu().numpy()
        self._arrived(flight, len(flow))
        self.batchers["flow_cnn"].add(flight, start, self.x.flow_backbone.preprocess(flow_to_image(flow)))

    def _arrived(self, flight: Flight, frames: int) -> None:
        flight.missing -= frames
        if flight.missing == 0 and flight.error is None:
            self.finished.put(flight)

    def _fail(self, flight: Flight, why: Exception | str) -> None:
        if flight.error is None:
            flight.error = why if isinstance(why, str) else failure_reason(why, flight.record["path"])
            self.finished.put(flight)

    # ------------------------------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        while (flight := self.finished.get()) is not _END:
            try:
                if flight.error is None:
                    self.writer.write_video(flight.key, flight.arrays, flight.result)  # data first, "done" last
            except Exception as exc:
                flight.error = failure_reason(exc, flight.record["path"])
            try:
                if flight.error is not None:
                    self.writer.write_failure(flight.key, flight.error)
            except Exception as exc:  # the store could not take even the failure: the outcome still says why
                flight.error += f" (and recording the failure failed: {type(exc).__name__}: {exc})"
            self.release(flight)
            self.outcomes.append(flight.outcome(DONE if flight.error is None else FAILED))

    def release(self, flight: Flight) -> None:
        """Drop a video's claim (once it is written, failed, or given up)."""
        self.flights.discard(flight)
        flight.claim.close()


def extract_pipelined(store_path: str, records: list[dict[str, Any]], config: ExtractConfig, runtime: Runtime,
                      writer: StoreWriter, extractor: Extractor) -> list[dict[str, Any]]:
    """Extract a group of videos through one :class:`Pipeline`; one outcome ({"id", "status", "error",
    "frames"}) per video, failures recorded in the store with their reasons, never raised."""
    return Pipeline(store_path, config, runtime, writer, extractor).run(records)
