"""A worker whose device is lost (an unrecoverable CUDA error leaves its context dead) is replaced, and only the
video that lost it fails: checked on the CPU with the test-only fault hook of glimpse.extract.device, which
raises torch's illegal-memory-access RuntimeError for one video's batch and, as a dead context does, for
every batch of that process after it."""

from __future__ import annotations

import logging
import os
import pickle
from typing import cast

import pytest
import torch
from extraction import extract
from test_extract import TINY_OPTS

from glimpse.extract import device
from glimpse.extract.api import FeatureRequest, fingerprinted, resolve_config
from glimpse.extract.config import Runtime
from glimpse.extract.datasets import load_dataset
from glimpse.extract.device import FAULT_ENV, FAULT_MESSAGE, DeviceLost, device_lost
from glimpse.extract.pipeline import extract_group, extract_video, prepare_store
from glimpse.store import open_store


def test_device_lost_recognises_the_errors_that_leave_a_dead_context_only():
    for message in (FAULT_MESSAGE, "CUDA error: unspecified launch failure",
                    "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`"):
        assert device_lost(RuntimeError(message)), message
    for recoverable in (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                        RuntimeError("CUDA error: out of memory"), ValueError("illegal memory access"),
                        RuntimeError("expected (T, H, W, 3) uint8")):
        assert not device_lost(recoverable), recoverable
    accelerator = getattr(torch, "AcceleratorError", None)
    if accelerator is not None:
        assert device_lost(accelerator("CUDA error: misbehaving device"))  # torch's own class for device errors
    try:
        try:
            raise RuntimeError(FAULT_MESSAGE)
        except RuntimeError as cause:
            raise ValueError("batch of video v1") from cause
    except ValueError as wrapped:
        assert device_lost(wrapped)  # found through the chain
    lost = pickle.loads(pickle.dumps(DeviceLost("device lost (RuntimeError: x)", "tcp://127.0.0.1:1", True)))
    assert (str(lost), lost.worker, lost.inherited) == ("device lost (RuntimeError: x)", "tcp://127.0.0.1:1", True)


def test_the_sequential_path_raises_a_lost_device_and_records_nothing(tiny_synthetic, tmp_path, monkeypatch,
                                                                     worker_threads):
    monkeypatch.setattr(device, "_lost", None)  # this process's dead-device marks, restored after the test
    monkeypatch.setattr(device, "_dead", False)
    dataset = fingerprinted(load_dataset("synthetic", str(tiny_synthetic)))
    options = {k: v for k, v in TINY_OPTS.items() if k != "batch_size"}
    config = resolve_config(FeatureRequest("synthetic", str(tiny_synthetic), **options), dataset)
    prepare_store(str(tmp_path / "s"), config, dataset)
    record = sorted(dataset.videos, key=lambda r: r.id)[0]
    monkeypatch.setenv(FAULT_ENV, record.id)
    with pytest.raises(DeviceLost, match="illegal memory access") as first:
        extract_video(str(tmp_path / "s"), record, config, Runtime(pipelined=False))
    assert not first.value.inherited
    assert open_store(tmp_path / "s").video(record.id).status == "pending"  # not recorded as failed by the worker
    monkeypatch.delenv(FAULT_ENV)
    other = sorted(dataset.videos, key=lambda r: r.id)[1]  # a task queued behind the loss, in the same process:
    with pytest.raises(DeviceLost, match="illegal memory access") as queued:  # refused, not blamed (run again)
        extract_group(str(tmp_path / "s"), [other], config, Runtime(pipelined=True))
    assert queued.value.inherited
    assert open_store(tmp_path / "s").video(other.id).status == "pending"


@pytest.mark.slow
def test_a_lost_device_fails_its_video_alone_and_its_worker_is_replaced(tiny_synthetic, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    ids = sorted(v.id for v in load_dataset("synthetic", str(tiny_synthetic)).videos)
    victim = ids[4]  # in the second group of three; the worker's other groups come before and after it
    monkeypatch.setenv(FAULT_ENV, victim)  # the workers (and their replacements) inherit it
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        before = set(cast(dict, client.run(os.getpid)).values())
        summary = extract("synthetic", str(tiny_synthetic), str(tmp_path / "s"), client=client, **TINY_OPTS)
        after = set(cast(dict, client.run(os.getpid)).values())
    assert list(summary.failed) == [victim]
    assert "device lost (RuntimeError: CUDA error: an illegal memory access" in summary.failed[victim]
    assert "its worker was replaced" in summary.failed[victim]
    videos = {v.id: v for v in open_store(summary.store).videos}
    assert videos[victim].status == "failed"
    assert all(v.status == "done" for vid, v in videos.items() if vid != victim)  # later videos ran on a live device
    assert after and not after & before  # the worker with the dead context is gone: a fresh process took its place
