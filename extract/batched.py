"""The pipelined extraction inside one worker: decode threads feed fixed-size batches that span videos.

One Dask task extracts a group of videos through one :class:`Pipeline`. A few decode threads claim,
decode, sample and resize each video (PyAV and OpenCV release the GIL), compute its whole streams there
(TV-L1 and Farneback flow, a stream that is a plain function of the frames) and put the inputs of its batched
streams (:mod:`glimpse.extract.streams`), in pieces of at most one batch, on a bounded queue. The task's own
thread takes the pieces off and runs the CNN, and RAFT, on batches of exactly ``batch_size`` that
may hold frames of several videos; short batches are padded, so a frame's features do not depend
on its batch-mates and the store equals the sequential path's. A batched stream's output feeds the streams
computed from it on the device (RAFT's flow into the flow-stream CNN). When every frame of a video is back,
a writer thread writes the video exactly as the sequential path does (all of its data first, "done" last)
and drops its claim.

A video that fails (cannot be decoded, too short, ...) fails alone with its reason: its frames
never enter a batch, or are skipped if already queued; the other videos are not touched. A device that is
lost (:func:`glimpse.extract.device.device_lost`: its CUDA context is dead) ends the task instead with
:class:`~glimpse.extract.device.DeviceLost`, recording nothing of the videos not yet written: the client
replaces the worker and runs them again one per task.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from glimpse.extract.config import CLAIMED, SKIPPED, Outcome, failure_reason
from glimpse.extract.device import DeviceLost, device_lost, fault_point
from glimpse.extract.streams import Extractor
from glimpse.store import StoreWriter, VideoRecord
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

    record: VideoRecord
    claim: ExitStack
    result: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    missing: int = 0  # frames, over every stream, whose outputs have not come back yet
    error: str | None = None

    @property
    def key(self) -> str:
        return video_key(self.record.id)

    def outcome(self, status: str) -> Outcome:
        return Outcome(self.record.id, status, self.error, self.result.get("n_frames", 0) if status == DONE else 0)


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
            fault_point(flight.record.id for flight, _, _ in live)  # tests only: a lost device
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

    def __init__(self, store_path: str, writer: StoreWriter, extractor: Extractor) -> None:
        self.store_path, self.writer, self.x = store_path, writer, extractor
        self.checker, self.check_lock = StoreWriter(store_path), threading.Lock()  # status reads of decode threads
        self.work: queue.Queue = queue.Queue(QUEUE_PIECES)
        self.finished: queue.Queue = queue.Queue(QUEUE_PIECES)
        self.outcomes: list[Outcome] = []
        self.abort = threading.Event()
        self.flights: set[Flight] = set()  # claimed and not yet released
        self.streams = extractor.streams  # by name, sources first
        self.batched = [name for name, stream in self.streams.items() if stream.batched]
        #: whole streams computed from a batched one: the writer thread computes them once their source is back
        self.late: list[str] = []
        for name, stream in self.streams.items():
            if stream.source in self.late and stream.batched:
                raise ValueError(f"stream {name} runs batched from {stream.source}, which is computed whole from a "
                                 "batched stream: the pipeline cannot feed it")
            if not stream.batched and stream.source in (*self.batched, *self.late):
                self.late.append(name)
        self.batchers: dict[tuple[str, tuple[int, ...]], Batcher] = {}  # (stream, input shape): a batch holds one
        #: streams a late stream is computed from come back float32 (what its compute sees on the sequential path);
        #: the others as float16, what the store holds: half the bytes copied off the device, the same bits
        self.exact = {self.streams[name].source for name in self.late}

    def run(self, records: list[VideoRecord]) -> list[Outcome]:
        """Extract ``records``; one outcome per video."""
        if not records:
            return []
        writer_thread = threading.Thread(target=self._write_loop, name="glimpse-writer", daemon=True)
        writer_thread.start()
        left, lock = [len(records)], threading.Lock()

        def job(record: VideoRecord) -> None:
            try:
                self._decode(record)
            finally:
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    self._put(_END, final=True)

        pool = ThreadPoolExecutor(max(1, self.x.runtime.decode_threads), thread_name_prefix="glimpse-decode")
        try:
            for record in records:
                pool.submit(job, record)
            while (item := self.work.get()) is not _END:
                kind, flight, *rest = item
                if kind == "fail":
                    self._fail(flight, rest[0])
                elif flight.error is None:
                    self._batcher(kind, tuple(rest[1:])).add(flight, *rest)
            for name in self.batched:  # sources first: RAFT's batches feed flow_cnn's
                for key, batcher in list(self.batchers.items()):
                    if key[0] == name:
                        batcher.flush()
        except Exception as exc:
            if device_lost(exc):  # the context is dead: nothing more runs here; what is not written runs again
                raise DeviceLost.of(exc) from exc
            raise
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

    def _decode(self, record: VideoRecord) -> None:
        flight = Flight(record, ExitStack())
        try:
            if not flight.claim.enter_context(claim_video(self.store_path, flight.key, note=record.id)):
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
                self._put(("fail", flight, exc if device_lost(exc) else failure_reason(exc, record.path)))
        except _Aborted:
            self.release(flight)

    def _feed(self, flight: Flight) -> None:
        """Decode one video, compute its whole streams and queue the pieces of its batched ones."""
        video, flight.result = self.x.decode(flight.record)
        queued = []
        for name, stream in self.streams.items():
            if stream.source in self.batched or name in self.late:  # fed from the device, or by the writer thread
                continue
            source = video if stream.source is None else flight.arrays[stream.source]
            if stream.batched:
                queued.append((name, stream, stream.inputs(source, flight.result)))  # each (T, ...)
            else:
                flight.arrays[name] = stream.compute(source, flight.result)
        n = flight.result["n_frames"]  # the stored steps: frames, or a video backbone's clips (set by its inputs)
        flight.missing = n * len(self.batched)
        for name, stream, inputs in queued:
            step = stream.batch_for(inputs[0].shape[1:])
            for start in range(0, n, step):
                self._put((name, flight, start, *stream.prepare(*(x[start : start + step] for x in inputs))))
        if not self.batched:  # nothing goes through the device: the video is complete
            self.finished.put(flight)

    # ------------------------------------------------------------------------------------ the task's thread

    def _batcher(self, name: str, tensors: tuple[torch.Tensor, ...]) -> Batcher:
        key = (name, tuple(tensors[0].shape[1:]))
        if key not in self.batchers:
            stream = self.streams[name]
            self.batchers[key] = Batcher(stream.batch_for(key[1]), stream.run, self._done(name), self._fail)
        return self.batchers[key]

    def _done(self, name: str) -> Callable:
        def done(flight: Flight, start: int, out: torch.Tensor) -> None:
            """A batch's outputs (b, ...) for frames ``start, ...``; streams computed from them go on from the
            device (RAFT's flow into the flow-stream CNN)."""
            host = (out if name in self.exact else out.half()).cpu().numpy()  # (b, ...); half rounds as numpy
            if name not in flight.arrays:
                flight.arrays[name] = np.empty((flight.result["n_frames"], *host.shape[1:]), host.dtype)
            flight.arrays[name][start : start + len(host)] = host
            self._arrived(flight, len(out))
            for follower, stream in self.streams.items():
                if stream.source == name and stream.batched:
                    tensors = stream.prepare(*stream.inputs(out, flight.result))
                    self._batcher(follower, tensors).add(flight, start, *tensors)

        return done

    def _arrived(self, flight: Flight, frames: int) -> None:
        flight.missing -= frames
        if flight.missing == 0 and flight.error is None:
            self.finished.put(flight)

    def _fail(self, flight: Flight, why: Exception | str) -> None:
        if isinstance(why, Exception) and device_lost(why):  # not the video's fault: the task ends (see run)
            raise why
        if flight.error is None:
            flight.error = why if isinstance(why, str) else failure_reason(why, flight.record.path)
            self.finished.put(flight)

    # ------------------------------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        while (flight := self.finished.get()) is not _END:
            try:
                if flight.error is None:
                    for name in self.late:
                        stream = self.streams[name]
                        flight.arrays[name] = stream.compute(flight.arrays[stream.source], flight.result)
                    self.writer.write_video(flight.key, flight.arrays, flight.result)  # data first, "done" last
            except Exception as exc:
                flight.error = failure_reason(exc, flight.record.path)
            recorded = True
            try:
                if flight.error is not None:
                    self.writer.write_failure(flight.key, flight.error)
            except Exception as exc:  # the store could not take even the failure: the outcome says why, the run stops
                flight.error = f"{flight.error} (and recording the failure failed: {type(exc).__name__}: {exc})"
                recorded = False
            self.release(flight)
            self.outcomes.append(dataclasses.replace(flight.outcome(DONE if flight.error is None else FAILED),
                                                     recorded=recorded))

    def release(self, flight: Flight) -> None:
        """Drop a video's claim (once it is written, failed, or given up)."""
        self.flights.discard(flight)
        flight.claim.close()
