"""What an extraction records of the device it ran on, and how it refuses a device it cannot use or that would mix
CPU and GPU features in one store (CUDA is hidden from the suite: see tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from typing import Any, cast

import pytest
import zarr
from extraction import extract
from test_extract import REPO, TINY_OPTS

from glimpse.store import open_store
from glimpse.store.catalog import format_info, store_info
from glimpse.store.writer import StoreWriter

OPTIONS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_OPTS.items()]


def run_extract(root, out, *more: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "glimpse.extract", "--dataset", "synthetic", "--root", str(root), "--out", str(out),
            "--workers", "1", "--quiet", *OPTIONS, *more]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_device_cuda_without_cuda_is_refused_before_anything_is_written(tiny_synthetic, tmp_path):
    out = tmp_path / "s"
    refused = run_extract(tiny_synthetic, out, "--device", "cuda")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr[-2000:]
    assert "--device cuda" in lines[0] and "cannot use a CUDA device" in lines[0]
    assert not out.exists()  # no store, so no video recorded as failed


def test_the_store_records_the_device_and_tf32_and_info_shows_them(tiny_synthetic, dask_client, tmp_path):
    summary = extract("synthetic", str(tiny_synthetic), str(tmp_path / "s"), client=dask_client, **TINY_OPTS)
    versions = open_store(summary.store).metadata.versions
    assert (versions["device"], versions["tf32"]) == ("cpu", "off") and "gpu" not in versions
    shown = format_info(store_info(summary.store))
    assert "device cpu" in shown and "tf32 off" in shown
    videos = open_store(summary.store).videos
    assert {v.device for v in videos} == {"cpu"} and "devices " not in shown  # one device: no devices line
    store, writer = open_store(summary.store), StoreWriter(summary.store)
    for n, video in enumerate(videos[:3]):  # as a resumed run on a GPU wrote two of them, and an old glimpse one
        arrays = {name: store.stream(video.id, name).read() for name in store.streams}
        writer.write_video(video.key, arrays, replace(video.result, device=None if n == 2 else "cuda NVIDIA H200"))
    assert open_store(summary.store).video(videos[2].id).device is None  # a video written before it was recorded
    shown = format_info(store_info(summary.store)).splitlines()
    assert f"devices      cpu {len(videos) - 3}, cuda NVIDIA H200 2, unrecorded 1" in shown


@pytest.mark.slow
def test_a_store_of_another_device_is_not_resumed_unless_asked(tiny_synthetic, dask_client, tmp_path):
    summary = extract("synthetic", str(tiny_synthetic), str(tmp_path / "s"), client=dask_client, **TINY_OPTS)
    root = zarr.open_group(summary.store, mode="r+")
    meta = cast(dict[str, Any], root.attrs["glimpse"])
    versions = {**cast(dict[str, Any], meta["versions"]), "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}
    root.attrs["glimpse"] = {**meta, "versions": versions}  # as a GPU run wrote it
    refused = run_extract(tiny_synthetic, summary.store, "--device", "cpu")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and "extracted on cuda, this run computes on cpu" in refused.stderr, lines
    assert "Traceback" not in refused.stderr
    allowed = run_extract(tiny_synthetic, summary.store, "--device", "cpu", "--other-device")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
