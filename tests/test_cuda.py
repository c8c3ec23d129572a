"""The suite on the CPU, and the few tests that exercise CUDA (``pytest -m cuda``; skipped without a device).

Everything else hides CUDA (tests/conftest.py), so that exactness tests and CPU-tuned thresholds hold on a
GPU machine too. The cuda tests compare against the CPU with tolerances: cuDNN's conv sums differ from the
CPU's in the last bits.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from extraction import extract

from glimpse.cluster import dask_client, plan_cluster, visible_gpus
from glimpse.store import open_store

TINY_EXTRACT = {"backbone": "googlenet", "weights": "none", "size": 64, "frames": 6, "batch_size": 8}


def test_the_suite_hides_cuda_from_its_process_subprocesses_and_workers(dask_client):
    import torch

    assert os.environ.get("CUDA_VISIBLE_DEVICES") == "" and not torch.cuda.is_available()
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "False"
    seen = dask_client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert set(seen.values()) == {""}


@pytest.mark.cuda
def test_gpu_workers_each_see_one_device_of_this_process():
    import torch

    count = visible_gpus()
    plan = plan_cluster(None, -1, cores=os.cpu_count() or 1, visible=count, default_workers=count)
    with dask_client(None, plan) as client:
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.device_count()))
    assert sorted(entry for entry, _ in seen.values()) == sorted(plan.devices)
    assert all(devices == 1 for _, devices in seen.values())


@pytest.mark.cuda
def test_extraction_on_cuda_gives_the_cpus_features_within_tolerance(tiny_synthetic, dask_client, tmp_path):
    stores = {}
    for device in ("cpu", "cuda"):
        client = dask_client if device == "cpu" else None  # cuda: a local GPU worker per device
        summary = extract("synthetic", str(tiny_synthetic), str(tmp_path / device), client=client,
                                  device=device, **TINY_EXTRACT)
        assert not summary.failed
        stores[device] = open_store(tmp_path / device)
    for video in stores["cpu"].videos:
        cpu, gpu = (stores[d].read(video.id, "rgb").astype(np.float32) for d in ("cpu", "cuda"))
        np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-2 * np.abs(cpu).max(), err_msg=video.id)


@pytest.mark.cuda
def test_training_on_cuda_runs_and_its_loss_stays_finite(tiny_synthetic, dask_client, tmp_path):
    import math

    from glimpse.train.loop import train_model

    assert not extract("synthetic", str(tiny_synthetic), str(tmp_path / "s"), client=dask_client,
                               device="cpu", **TINY_EXTRACT).failed
    result = train_model(tmp_path / "s", "softattn", tmp_path / "run", epochs=2, batch_size=2, workers=0,
                         device="cuda", progress=False, model_args={"hidden": 8})
    assert result.epochs == 2 and math.isfinite(result.test_score)
