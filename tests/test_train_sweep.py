"""Training as a service: sweeps of real runs as tasks on a real LocalCluster and on a hand-started cluster."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from extraction import extract
from reliability_log import record

from glimpse.train.config import TrainConfig
from glimpse.train.run import RunDir
from glimpse.train.sweep import grid_points, parse_grid, point_name, point_options, results_table, sweep

REPO = Path(__file__).resolve().parents[1]
TINY_EXTRACT = {"backbone": "googlenet", "weights": "none", "size": 64, "frames": 6, "batch_size": 8}
#: 2 x 2 points of regattn; the tiny store's maps are 2 x 2, so N = 1 block and the two penalties over it
GRID = ["lambda=1e-4,1e-3", "penalty=l21,sqrt_mass"]


@pytest.fixture(scope="module")
def tiny_store(tiny_synthetic, dask_client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_store") / "tiny"
    assert not extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, **TINY_EXTRACT).failed
    return out


def test_grids_parse_into_typed_points():
    grid = parse_grid(["lambda=1e-6,1e-5", "blocks=2,4,6", "lr=0.01"])
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"lambda": "1e-6", "blocks": "2", "lr": "0.01"}
    assert point_name(points[1]) == "lambda=1e-6_blocks=4_lr=0.01"
    options = point_options("regattn", {"epochs": 3, "model_args": {"hidden": 8}}, points[1])
    assert options == {"epochs": 3, "lr": 0.01, "model_args": {"hidden": 8, "lam": 1e-6, "blocks": 4}}
    with pytest.raises(ValueError, match="NAME=V1,V2"):
        parse_grid(["lambda"])
    rows = [{"point": p, "metric": "accuracy", "test_score": 0.5} for p in grid_points(parse_grid(GRID))]
    table = results_table(parse_grid(GRID), rows).splitlines()
    assert table[0] == "| test accuracy (%) | penalty=l21 | penalty=sqrt_mass |"
    assert table[2] == "| lambda=1e-4 | 50.0 | 50.0 |"


def test_every_sampling_field_is_a_grid_name_and_a_table_of_failed_points_says_so():
    options = point_options("softattn", {}, {"sampling": "random", "clips_per_video": "3", "steps": "40",
                                             "shuffle_videos": "2", "cache_dir": "/tmp/c", "lr_drop_step": "9"})
    assert options == {"sampling": "random", "clips_per_video": 3, "steps": 40, "shuffle_videos": 2,
                       "cache_dir": "/tmp/c", "lr_drop_step": 9, "model_args": {}}
    TrainConfig(store="s", model="softattn", out="o", **options)  # every field a TrainConfig takes, typed
    grid = parse_grid(["lr=1e-3,1e-2"])
    failed = [{"point": p, "error": "ValueError: no videos"} for p in grid_points(grid)]
    table = results_table(grid, failed).splitlines()
    assert table[0].startswith("| lr | test accuracy (%) |") and len(table) == 4
    assert all("| failed |" in line and "no videos" in line for line in table[2:])
    matrix = results_table(parse_grid(GRID), []).splitlines()  # a two-name grid: write_results drops failed rows
    assert matrix[2] == "| lambda=1e-4 | failed | failed |"


def check_results(out: Path, expected_points: int) -> list[dict]:
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected_points and all(r["error"] == "" for r in rows), rows
    for r in rows:
        config = json.loads((Path(r["run_dir"]) / "config.json").read_text())["model"]["config"]
        assert config["lam"] == float(r["lambda"]) and config["penalty"] == r["penalty"]
        assert json.loads((Path(r["run_dir"]) / "result.json").read_text())["stopped"] == "completed"
    assert "| lambda=1e-3 |" in (out / "results.md").read_text()
    return rows


def test_a_sweep_runs_every_point_on_a_local_cluster_and_writes_its_table(tiny_store, dask_client, tmp_path):
    options = {"epochs": 2, "batch_size": 2, "workers": 0, "model_args": {"hidden": 8}}
    rows, table = sweep(str(tiny_store), "regattn", tmp_path / "sweep", parse_grid(GRID), options, dask_client,
                        threads=1)
    assert len(rows) == 4 and "penalty=sqrt_mass" in table
    check_results(tmp_path / "sweep", 4)
    again, _ = sweep(str(tiny_store), "regattn", tmp_path / "sweep", parse_grid(GRID), options, dask_client)
    assert [r["test_score"] for r in again] == [r["test_score"] for r in rows]  # finished runs are just reported


@pytest.mark.slow
@pytest.mark.reliability
def test_a_sweep_through_a_hand_started_cluster_survives_the_loss_of_its_worker(tiny_store, tmp_path):
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", scheduler_file], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen([bin_dir / "dask", "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard"], cwd=REPO, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=120)
            (worker_pid,) = client.run(os.getpid).values()
        out = tmp_path / "sweep"
        args = [sys.executable, "-m", "glimpse.train", "sweep", "--store", str(tiny_store), "--model", "regattn",
                "--out", str(out), "--scheduler", address, "--epochs", "6", "--batch-size", "1", "--set", "hidden=8",
                "--threads", "1", *[a for g in GRID for a in ("--grid", g)]]
        sweep_proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(sweep_proc)
        deadline = time.monotonic() + 300
        while not any(RunDir(d).file("last.pt").exists() for d in out.glob("*=*")):  # a run is under way
            assert sweep_proc.poll() is None and time.monotonic() < deadline, sweep_proc.stderr.read()[-3000:]
            time.sleep(0.005)
        os.kill(worker_pid, signal.SIGKILL)  # the nanny starts a new worker; the scheduler resubmits the task
        stdout, stderr = sweep_proc.communicate(timeout=300)
        assert sweep_proc.returncode == 0, stderr[-3000:]
        assert "| test accuracy (%) | penalty=l21 | penalty=sqrt_mass |" in stdout and "4/4 runs done" in stdout
        check_results(out, 4)
        events = [e for d in out.glob("*=*") for e in RunDir(d).events()]
        assert any(e.startswith("resumed") for e in events), events
        record("crash", "SIGKILL of the only Dask worker of a 4-run sweep while a run trained (hand-started "
               "scheduler)", "the nanny restarted the worker, the scheduler ran the task again and it resumed its "
               "run from the last checkpoint; 4/4 runs completed", crashes_survived=1)
    finally:
        for proc in procs[:2]:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if procs[-1].poll() is None:
            procs[-1].kill()
            procs[-1].wait()
