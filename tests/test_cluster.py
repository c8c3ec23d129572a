"""The one cluster set-up (glimpse.cluster): local plans, GPU pinning specs, --gpus without CUDA, GPU resources."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from glimpse.cluster import GPU, ClusterError, ClusterPlan, gpu_resources, parse_gpus, plan_cluster
from glimpse.extract.cli import main


def test_cpu_plans_keep_one_thread_per_core_overall():
    assert plan_cluster(None, None, cores=8, visible=0, default_workers=8) == ClusterPlan(8, 1)
    assert plan_cluster(2, None, cores=8, visible=2, default_workers=8) == ClusterPlan(2, 4)  # GPUs not asked for
    assert plan_cluster(3, None, cores=2, visible=0, default_workers=2) == ClusterPlan(3, 1)


def test_gpu_plans_start_one_pinned_worker_per_device():
    assert plan_cluster(None, -1, cores=16, visible=4, default_workers=16) == ClusterPlan(4, 4, (0, 1, 2, 3))
    plan = plan_cluster(None, 2, cores=16, visible=4, default_workers=16)
    assert plan == ClusterPlan(2, 8, (0, 1))
    specs = plan.worker_specs()
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["0", "1"]
    assert all(s["options"]["resources"] == {GPU: 1} and s["options"]["nthreads"] == 1 for s in specs.values())
    assert plan_cluster(2, 2, cores=16, visible=4, default_workers=16).workers == 2


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
