"""The one cluster set-up (glimpse.cluster): local plans, GPU pinning specs, --gpus without CUDA, GPU resources,
devices of an external cluster's workers, quiet logs and clean worker exits."""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from glimpse.cluster import (
    GPU,
    ClusterError,
    ClusterPlan,
    dask_client,
    device_rank,
    gpu_resources,
    parse_gpus,
    plan_cluster,
    worker_device,
)
from glimpse.extract.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_cpu_plans_keep_one_thread_per_core_overall():
    assert plan_cluster(None, None, cores=8, visible=0, default_workers=8) == ClusterPlan(8, 1)
    assert plan_cluster(2, None, cores=8, visible=2, default_workers=8) == ClusterPlan(2, 4)  # GPUs not asked for
    assert plan_cluster(3, None, cores=2, visible=0, default_workers=2) == ClusterPlan(3, 1)


def test_gpu_plans_start_one_pinned_worker_per_device():
    every = plan_cluster(None, -1, cores=16, visible=4, default_workers=16, visible_ids="")
    assert every == ClusterPlan(4, 4, ("0", "1", "2", "3"))
    plan = plan_cluster(None, 2, cores=16, visible=4, default_workers=16, visible_ids="")
    assert plan == ClusterPlan(2, 8, ("0", "1"))
    specs = plan.worker_specs(memory=128 * 2**30)
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["0", "1"]
    assert all(s["options"]["resources"] == {GPU: 1} and s["options"]["nthreads"] == 1 for s in specs.values())
    assert all(s["options"]["memory_limit"] == 64 * 2**30 for s in specs.values())  # RAM / workers, not RAM / cores
    assert plan_cluster(2, 2, cores=16, visible=4, default_workers=16).workers == 2


def test_gpu_workers_get_the_parents_devices_not_the_first_physical_ones():
    """A job scheduler gave this process GPUs 2 and 3: the workers must use those, not 0 and 1 (someone else's)."""
    plan = plan_cluster(None, -1, cores=16, visible=2, default_workers=16, visible_ids="2,3")
    assert plan.devices == ("2", "3")
    uuids = "GPU-8a1f,GPU-77c2,GPU-0d3e"
    assert plan_cluster(None, 2, cores=8, visible=3, default_workers=8, visible_ids=uuids).devices == ("GPU-8a1f",
                                                                                                       "GPU-77c2")
    with pytest.raises(ClusterError, match="CUDA_VISIBLE_DEVICES=5 lists only 1 device"):
        plan_cluster(None, 2, cores=8, visible=2, default_workers=8, visible_ids="5")


def test_started_gpu_workers_see_their_own_device_and_a_share_of_the_ram(monkeypatch):
    """Real nannies of a GPU plan (their workers never touch CUDA here): each one's environment and memory limit."""
    from distributed.system import MEMORY_LIMIT

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    plan = plan_cluster(None, -1, cores=2, visible=2, default_workers=2)
    with dask_client(None, plan) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        workers = client.scheduler_info()["workers"].values()
    assert sorted(seen.values()) == ["5", "7"]
    assert [w["memory_limit"] for w in workers] == [MEMORY_LIMIT // 2] * 2
    assert all(w["resources"] == {GPU: 1} for w in workers)


@pytest.mark.parametrize(("workers", "gpus", "visible", "message"), [
    (None, 1, 0, "torch sees no CUDA device"),
    (None, -1, 0, "--gpus all: torch sees no CUDA device"),
    (None, 3, 2, "only 2 CUDA device"),
    (4, 2, 2, "one worker per GPU; --workers 4"),
])
def test_impossible_gpu_plans_are_clear_errors(workers, gpus, visible, message):
    with pytest.raises(ClusterError, match=message):
        plan_cluster(workers, gpus, cores=8, visible=visible, default_workers=8)


def test_parse_gpus():
    assert [parse_gpus(v) for v in (None, "", "0", "2", 3, "all", "ALL")] == [None, None, None, 2, 3, -1, -1]
    for bad in ("two", "-1"):
        with pytest.raises(ClusterError, match=f"--gpus '{bad}'"):
            parse_gpus(bad)


def test_gpus_on_a_machine_without_cuda_is_a_one_line_usage_error(tiny_synthetic, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --gpus 1 would start a GPU worker")
    args = ["--dataset", "synthetic", "--root", str(tiny_synthetic), "--out", str(tmp_path / "s"), "--weights", "none",
            "--gpus", "1", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Error: --gpus 1: torch sees no CUDA device on this machine" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()
    bad = CliRunner().invoke(main, [*args[:-3], "--gpus", "1", "--device", "cpu", "--quiet"])
    assert bad.exit_code == 2 and "does not go with --device cpu" in bad.output


def test_gpu_tasks_ask_for_gpu_workers_only_where_the_cluster_declares_them():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, silence_logs=logging.ERROR) as plain, \
            Client(plain) as client:
        assert gpu_resources(client) is None
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, silence_logs=logging.ERROR,
                      resources={GPU: 1}) as gpus, Client(gpus) as client:
        assert gpu_resources(client) == {GPU: 1}
        assert client.submit(sum, [1, 2], resources=gpu_resources(client)).result() == 3


def test_device_rank_spreads_a_hosts_gpu_workers_over_distinct_devices():
    workers = {f"tcp://10.0.0.{h}:{port}": {"host": f"10.0.0.{h}", "resources": {GPU: 1}}
               for h in (1, 2) for port in (4001, 4002, 4003, 4004)}
    workers["tcp://10.0.0.1:3999"] = {"host": "10.0.0.1", "resources": {}}  # a CPU worker on the same host
    ranks = [device_rank(a, workers) for a in workers if workers[a]["host"] == "10.0.0.1" and workers[a]["resources"]]
    assert sorted(ranks) == [0, 1, 2, 3]
    assert device_rank("tcp://10.0.0.2:4003", workers) == 2


def test_an_external_clusters_gpu_workers_pick_distinct_devices():
    """Four workers declaring GPU=1 on one host, each seeing four devices (as ``dask worker --resources GPU=1``
    started by hand): each task's device is its worker's own, four distinct ones."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=4, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0",
                           silence_logs=logging.ERROR, resources={GPU: 1})
    with cluster, Client(cluster) as client:
        addresses = list(client.scheduler_info()["workers"])
        devices = [client.submit(worker_device, 4, workers=[a], pure=False).result() for a in addresses]
        again = [client.submit(worker_device, 4, workers=[a], pure=False).result() for a in addresses]
        single = client.submit(worker_device, 1, pure=False).result()
    assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"] and again == devices
    assert single == "cuda"  # a worker pinned to one device (CUDA_VISIBLE_DEVICES of one entry) uses it


@pytest.mark.slow
def test_a_worker_slow_to_exit_is_not_killed_at_a_normal_shutdown(caplog):
    """torch's interpreter teardown takes seconds on a loaded machine; Dask kills a worker after 4 s."""
    caplog.set_level(logging.INFO, logger="distributed")
    with dask_client(None, ClusterPlan(1, 1), verbose=True) as client:
        client.run(lambda: atexit.register(time.sleep, 5))  # the worker process's teardown takes 5 s
    assert "Nanny asking worker to close" in caplog.text  # Dask's lines were captured
    assert "killed by signal" not in caplog.text and "still alive" not in caplog.text


@pytest.mark.slow
def test_an_extraction_prints_no_dask_line(tiny_synthetic, tmp_path):
    """An extraction of 3 videos through the real local cluster: the CLI's own lines, none of Dask's."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    lists = root / "ucfTrainTestlist"
    for name, keep in (("trainlist01.txt", 2), ("testlist01.txt", 1)):
        lines = (lists / name).read_text().splitlines()
        (lists / name).write_text("\n".join(lines[:keep]) + "\n")
    args = [sys.executable, "-m", "glimpse.extract", "--dataset", "synthetic", "--root", str(root), "--out",
            str(tmp_path / "s"), "--weights", "none", "--size", "32", "--workers", "2", "--quiet"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 videos extracted" in done.stdout + done.stderr, done.stdout + done.stderr
    dask_lines = [line for line in (done.stdout + done.stderr).splitlines() if "distributed." in line]
    assert not dask_lines, dask_lines
