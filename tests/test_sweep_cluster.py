"""Which cluster a sweep gets and what its runs ask of it: GPUs used where there are some, a remote cluster's GPUs
checked before anything is submitted, never a wait forever for a resource no worker has."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from glimpse.cluster import GPU, ClusterCannotRun, ClusterError, ClusterPlan
from glimpse.train.sweep import parse_grid, sweep, sweep_cluster

REPO = Path(__file__).resolve().parents[1]


def test_a_local_sweep_on_a_gpu_machine_runs_one_pinned_worker_per_gpu():
    four = lambda: 4  # noqa: E731 - torch would see four devices
    assert sweep_cluster("auto", None, None, False, 16, four) == (ClusterPlan(4, 4, ("0", "1", "2", "3")), 1)
    assert sweep_cluster("cuda", None, None, False, 16, four) == (ClusterPlan(4, 4, ("0", "1", "2", "3")), 1)
    assert sweep_cluster("auto", "2", None, False, 16, four) == (ClusterPlan(2, 8, ("0", "1")), 1)
    assert sweep_cluster("cpu", None, 3, False, 12, four) == (ClusterPlan(3, 4), 0)
    assert sweep_cluster("auto", None, None, False, 2, lambda: 0) == (ClusterPlan(2, 1), 0)
    with pytest.raises(ClusterError, match="torch sees no CUDA device"):
        sweep_cluster("cuda", None, None, False, 2, lambda: 0)
    with pytest.raises(ClusterError, match="does not go with --device cpu"):
        sweep_cluster("cpu", "2", None, False, 2, four)


def test_a_sweep_on_a_remote_cluster_does_not_need_cuda_here():
    nothing = lambda: pytest.fail("a remote sweep must not ask this machine for CUDA devices")  # noqa: E731
    assert sweep_cluster("cuda", None, None, True, 2, nothing)[1] == 1
    assert sweep_cluster("auto", None, None, True, 2, nothing)[1] is None  # GPUs where the cluster declares them
    assert sweep_cluster("cpu", None, None, True, 2, nothing)[1] == 0
    with pytest.raises(ClusterError, match="--gpus starts local workers"):
        sweep_cluster("cuda", "2", None, True, 2, nothing)


def test_runs_asking_for_gpus_no_worker_has_are_refused_before_submission(tmp_path):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=":0", silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        with pytest.raises(ClusterCannotRun, match=f"has no worker with the resource {GPU}=1"):
            sweep("store", "softattn", tmp_path / "sweep", parse_grid(["lr=0.1"]), {}, client, gpus_per_run=1)
        assert not client.who_has() and not (tmp_path / "sweep").exists()


def test_sweep_cli_with_cuda_on_a_remote_cpu_cluster_is_one_line(tmp_path):
    """From a login node (no CUDA here): the remote cluster decides, and its lack of GPU workers is one line."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0",
                           silence_logs=logging.ERROR)
    with cluster:
        args = [sys.executable, "-m", "glimpse.train", "sweep", "--store", str(tmp_path / "store"), "--model",
                "softattn", "--out", str(tmp_path / "sweep"), "--scheduler", cluster.scheduler_address,
                "--device", "cuda", "--grid", "lr=0.1,0.2"]
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert lines[-1].startswith("Error: the Dask cluster at tcp://127.0.0.1:") and f"{GPU}=1" in lines[-1], lines
    assert "Traceback" not in done.stderr and "sees no CUDA device" not in done.stderr
