"""The extraction job: Dask tasks of a few videos each, each worker holding its models once.

The client creates (or reopens) the store and submits every video not yet done, in groups
(:func:`plan_groups`); a group whose worker died runs again one video per task, and a lone video whose
worker died is recorded as failed (a decoder crash fails at most that video). A worker whose device was
lost (:class:`~glimpse.extract.device.DeviceLost`: a dead CUDA context fails everything after it) is
replaced first, and its task is handled the same way. Workers decode, compute
flow and conv cubes, pipelined across a group's videos (:mod:`extract.batched`) or one video after the
other (the reference path), and write each video themselves; nothing is marked done before all of its
data is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glimpse.cluster import gpu_resources, replace_worker, worker_device
from glimpse.extract.backbones import backbone_spec
from glimpse.extract.batched import Pipeline
from glimpse.extract.config import (
    CLAIMED,
    SKIPPED,
    ExtractConfig,
    Outcome,
    Runtime,
    UnrecordedFailure,
    failure_reason,
)
from glimpse.extract.datasets import Dataset
from glimpse.extract.device import DeviceLost, device_lost, fault_point, refuse_if_lost
from glimpse.extract.streams import Extractor, describe_streams
from glimpse.store import StoreWriter, VideoRecord, create_store, open_store
from glimpse.store.claims import SCHEDULER, claim_video, hold_claims_on, is_claimed
from glimpse.store.layout import video_key
from glimpse.store.maintenance import compact_index
from glimpse.store.schema import DONE, FAILED

#: Seconds between looks at videos another run is extracting.
POLL_SECONDS = 0.5

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- worker side

_MODELS: dict[tuple, Extractor] = {}  # per worker process: (config, runtime) -> its Extractor
_WRITERS: dict[str, StoreWriter] = {}


def worker_setup(store_path: str, runtime: Runtime) -> tuple[Runtime, StoreWriter]:
    """In a worker: pin torch / OpenCV threads, TF32 off (features as float32 convolutions give them), the CUDA
    device and where this process claims videos (``runtime.claims``); the worker's store writer."""
    import cv2
    import torch

    if runtime.claims == SCHEDULER:
        from distributed import get_worker

        hold_claims_on(get_worker())
    else:
        hold_claims_on(None)

    torch.set_num_threads(max(1, runtime.threads))
    cv2.setNumThreads(max(1, runtime.threads))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if runtime.device == "cuda" and torch.cuda.device_count() > 1:  # a worker that glimpse.cluster did not pin
        runtime = dataclasses.replace(runtime, device=worker_device())
    return runtime, _WRITERS.get(store_path) or _WRITERS.setdefault(store_path, StoreWriter(store_path))


def worker_models(config: ExtractConfig, runtime: Runtime) -> Extractor:
    """The worker's :class:`glimpse.extract.streams.Extractor` for ``config``, built once per worker process
    (whichever path runs them)."""
    model_key = (config, dataclasses.replace(runtime, pipelined=True, group=None, decode_threads=0, claims=""))
    if model_key not in _MODELS:
        _MODELS.clear()
        _MODELS[model_key] = Extractor(config, runtime)
    return _MODELS[model_key]


def extract_video(store_path: str, record: VideoRecord, config: ExtractConfig, runtime: Runtime) -> Outcome:
    """Extract one video into the store, decode then CNN then flow in sequence (the reference path).

    Any exception becomes a failure record with its reason; the exception does not propagate, so one bad video
    never stops the run. A lost device raises :class:`DeviceLost` instead, recording nothing (the client replaces
    the worker, see :func:`run_extraction`).
    """
    key = video_key(record.id)
    runtime, writer = worker_setup(store_path, runtime)
    with claim_video(store_path, key, note=record.id) as held:
        if not held:  # another run is writing this video right now
            return Outcome(record.id, CLAIMED)
        if writer.status(key) == DONE:  # another run finished it while this task waited
            return Outcome(record.id, SKIPPED)
        try:
            fault_point([record.id])  # tests only: a lost device
            arrays, result = worker_models(config, runtime)(record)
            writer.write_video(key, arrays, result)
            return Outcome(record.id, DONE, frames=result["n_frames"])
        except Exception as exc:  # every failure is recorded, never raised: the run goes on
            if device_lost(exc):  # but not a dead device's: every video after it would fail on this worker
                raise DeviceLost.of(exc) from exc
            reason = failure_reason(exc, record.path)
            try:
                writer.write_failure(key, reason)
            except Exception as unrecorded:  # the store cannot take it: the client stops the run
                return Outcome(record.id, FAILED, f"{reason} (and recording the failure failed: "
                               f"{type(unrecorded).__name__}: {unrecorded})", recorded=False)
            return Outcome(record.id, FAILED, reason)


def extract_group(store_path: str, records: list[VideoRecord], config: ExtractConfig,
                  runtime: Runtime) -> list[Outcome]:
    """Dask task: extract a group of videos, pipelined (:mod:`extract.batched`) or one after the other; one
    outcome per video. A worker whose device an earlier task lost refuses it (the client runs it again elsewhere)."""
    refuse_if_lost()
    if not runtime.pipelined:
        return [extract_video(store_path, record, config, runtime) for record in records]
    runtime, writer = worker_setup(store_path, runtime)
    try:
        pipeline = Pipeline(store_path, writer, worker_models(config, runtime))
    except Exception:  # weights that do not load, streams the pipeline cannot feed: each video goes the sequential
        return [extract_video(store_path, record, config, runtime) for record in records]  # way (a failure: its reason)
    return pipeline.run(records)


# ---------------------------------------------------------------------------------------------- client side


@dataclass
class Summary:
    """What an extraction run did."""

    store: str
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    by_others: int = 0
    frames: int = 0
    seconds: float = 0.0

    def add(self, outcome: Outcome, by_other_run: bool = False) -> None:
        """Count one video's outcome."""
        if outcome.status == FAILED:
            self.failed[outcome.id] = outcome.error or "failed"
            log.warning("failed %s: %s", outcome.id, outcome.error)
        elif by_other_run or outcome.status == SKIPPED:
            self.by_others += 1
        else:
            self.done += 1
            self.frames += outcome.frames

    def report(self) -> str:
        lines = [
            f"{self.store}: {self.done} videos extracted, {self.skipped} already done, {self.by_others} done by "
            f"another run, {len(self.failed)} failed, {self.frames} frames in {self.seconds:.1f} s"
        ]
        lines += [f"  FAILED {vid}: {why}" for vid, why in sorted(self.failed.items())]
        return "\n".join(lines)


def store_versions(device: str) -> dict[str, str]:
    """Versions of everything that shapes the features, recorded in the store: the libraries, and the device kind the
    workers compute on with, on CUDA, the GPU's name, the CUDA and cuDNN versions and TF32 (off: see worker_setup)."""
    import av
    import cv2
    import numpy
    import torch
    import torchvision
    import zarr

    versions = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "av": av.__version__,
        "opencv": cv2.__version__,
        "zarr": zarr.__version__,
        "numpy": numpy.__version__,
        "device": device_kind(device),
        "tf32": "off",
    }
    if device_kind(device) == "cuda" and torch.cuda.is_available():
        versions.update(gpu=torch.cuda.get_device_name(0), cuda=str(torch.version.cuda),
                        cudnn=str(torch.backends.cudnn.version()))
    return versions


def device_kind(device: str) -> str:
    """``"cuda"`` for any CUDA device (``cuda:1``), else the device as given (``cpu``)."""
    return device.split(":")[0]


def prepare_store(out: str, config: ExtractConfig, dataset: Dataset, *, overwrite: bool = False,
                  source: dict[str, Any] | None = None, codec: str | None = None, device: str = "cpu") -> StoreWriter:
    """Create the store of ``dataset``'s videos for ``config`` at ``out`` (or reopen it to resume).

    ``source`` records where the dataset and weights files were (not part of the config hash), so
    that ``store repair`` can run the extraction again; ``codec`` how chunks are stored (see
    :func:`store.create_store`).
    """
    spec = backbone_spec(config.backbone, config.layer)
    info = {"backbone": spec.name, "layer": spec.layer, "weights": config.weights.identity,
            "versions": store_versions(device), "source": dict(source or {})}
    return create_store(
        out,
        dataset=config.dataset,
        classes=dataset.classes,
        records=sorted(dataset.videos, key=lambda r: r.id),
        config=config.to_dict(),
        streams=describe_streams(config.stream_specs(), config),
        info=info,
        overwrite=overwrite,
        multi_label=dataset.multilabel,
        codec=codec,
    )


def run_extraction(writer: StoreWriter, config: ExtractConfig, runtime: Runtime, dataset: Dataset, client: Any, *,
                   on_result: Callable[[Outcome], None] | None = None) -> Summary:
    """Extract every video of ``dataset`` not yet done in the store ``writer`` writes (made by :func:`prepare_store`)
    through a Dask ``client``."""
    from distributed import as_completed  # the Dask client's side: not imported by workers' tasks

    start = time.perf_counter()
    out = str(writer.path)
    config = dataclasses.replace(config, streams=config.streams or config.stream_specs())  # the workers' registry
    records = sorted(dataset.videos, key=lambda r: r.id)
    status = {v.id: v.status for v in open_store(out).videos}
    by_id = {r.id: r for r in records}
    todo = [r for r in records if status.get(r.id) != DONE]
    summary = Summary(store=out, skipped=len(records) - len(todo))
    store_path = os.fspath(out)
    resources = gpu_resources(client) if runtime.device.startswith("cuda") else None  # GPU workers only, if declared
    n_workers = max(1, len(client.scheduler_info()["workers"]))

    def submit(video_ids: list[str]):
        key = f"extract-{video_key(video_ids[0])}-{len(video_ids)}-{time.monotonic_ns()}"
        return client.submit(extract_group, store_path, [by_id[v] for v in video_ids], config, runtime,
                             key=key, pure=False, resources=resources)

    pending = {submit(ids): ids for ids in plan_groups([r.id for r in todo], n_workers, runtime)}
    waiting: set[str] = set()  # videos another run holds: watched until done there, or taken over here
    while pending or waiting:
        running = as_completed(pending)
        for future in running:
            outcomes, again = _outcomes(future, pending[future], by_id, writer, store_path, client)
            for video_id in again:  # a group whose worker died: what it left runs again, one video per task
                pending[retry := submit([video_id])] = [video_id]
                running.add(retry)
            for outcome in outcomes:
                if not outcome.recorded:
                    raise UnrecordedFailure(f"{out}: video {outcome.id} failed and the store could not record it, so "
                                            f"the run stops: {outcome.error}")
                if outcome.status == CLAIMED:
                    waiting.add(outcome.id)
                    continue
                summary.add(outcome)
                if on_result is not None:
                    on_result(outcome)
        pending = {}
        while waiting and not pending:
            time.sleep(POLL_SECONDS)
            for video_id in sorted(waiting):
                key = video_key(video_id)
                if is_claimed(store_path, key):
                    continue
                waiting.discard(video_id)
                if writer.status(key) in (DONE, FAILED):  # the other run finished it
                    entry = open_store(store_path).video(video_id)
                    summary.add(Outcome(video_id, entry.status, entry.error), True)
                else:  # the other run died before finishing it: do it here
                    pending[submit([video_id])] = [video_id]
    compact_index(store_path)  # the workers' index logs folded into one snapshot: the next open reads a few arrays
    summary.seconds = time.perf_counter() - start
    return summary


#: Pipelined runs give each worker about this many tasks (load balance), each of at most MAX_GROUP videos.
GROUPS_PER_WORKER, MAX_GROUP = 4, 16


def plan_groups(video_ids: list[str], workers: int, runtime: Runtime) -> list[list[str]]:
    """The videos of each Dask task: ``runtime.group`` per task, else one (sequential) or, pipelined, enough
    that each worker gets about :data:`GROUPS_PER_WORKER` tasks, whose batches then span their videos."""
    size = runtime.group or (1 if not runtime.pipelined else -(-len(video_ids) // (workers * GROUPS_PER_WORKER)))
    size = max(1, min(size, runtime.group or MAX_GROUP))
    return [list(video_ids[i : i + size]) for i in range(0, len(video_ids), size)]


def _outcomes(future: Any, video_ids: list[str], by_id: dict[str, VideoRecord], writer: StoreWriter,
              store_path: str, client: Any) -> tuple[list[Outcome], list[str]]:
    """A group task's outcomes, and the videos to run again one by one because its worker died or lost its device
    (that worker is replaced first, so that what runs again does not meet its dead context).

    A lone video whose worker died twice (e.g. a decoder segfault), or lost its device, is recorded as failed here,
    so a video that crashes its worker fails alone; one refused by a worker whose device an earlier task lost
    (``inherited``) runs again.
    """
    try:
        return future.result(), []
    except Exception as exc:
        lost = exc if isinstance(exc, DeviceLost) else None
        replaced = lost is not None and lost.worker is not None and replace_worker(client, lost.worker)
        if lost is not None and lost.inherited and replaced:  # refused by a dead worker, now replaced:
            return [], list(video_ids)  # not this video's doing
        if len(video_ids) > 1:
            done = [v for v in video_ids if writer.status(video_key(v)) == DONE]
            frames = {v: open_store(store_path).video(v).n_frames for v in done}
            return [Outcome(v, DONE, frames=frames[v]) for v in done], [v for v in video_ids if v not in frames]
        video_id = video_ids[0]
        path = by_id[video_id].path
        reason = (f"{path}: {exc}; its worker was {'' if replaced else 'not '}replaced" if lost is not None else
                  f"{path}: worker died while extracting ({type(exc).__name__}: {exc})")
        with claim_video(store_path, video_key(video_id)) as held:
            if held:
                writer.write_failure(video_key(video_id), reason)
        return [Outcome(video_id, FAILED, reason)], []
