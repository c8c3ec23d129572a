"""Runs that say what they are: finished or not in the table, checkpoints that recover, one trainer per run, a
store that moved, and checkpoints and random states that load on the device the run uses.

Every run here trains on a hand-written store (tests/test_train.py's ``hand_store``: 18 videos of 7 frames of
6 x 3 x 3 cubes) in seconds; the kills and the second trainer are real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train import FAST, hand_store, same_metrics

from glimpse.cli import main as glimpse_cli
from glimpse.evaluate.cli import main as evaluate_cli
from glimpse.train.cli import main as train_cli
from glimpse.train.config import TrainConfig, resolve
from glimpse.train.loop import resume_run, train_model
from glimpse.train.predict import load_run
from glimpse.train.run import RunBusyError, RunDir, RunFileError, rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]
SMALL = {**FAST, "model_args": {"hidden": 8}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A hand-written store (read-only for tests: copy it before moving it)."""
    return hand_store(tmp_path_factory.mktemp("runs") / "hand", streams=("rgb",))


def train_process(store: Path, out: Path, epochs: int, model: str = "softattn") -> subprocess.Popen:
    """``python -m glimpse.train`` of a small run, as a real process."""
    args = [sys.executable, "-m", "glimpse.train", "--store", str(store), "--model", model, "--out", str(out),
            "--set", "hidden=8", "--epochs", str(epochs), "--batch-size", "2", "--workers", "0", "--quiet"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def wait_for_epochs(proc: subprocess.Popen, run: Path, epochs: int) -> None:
    """Wait until ``epochs`` rows are in the run's metrics.csv, the process still running."""
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file() or len(RunDir(run).metrics()) < epochs:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


@pytest.mark.slow
def test_a_run_killed_mid_way_is_never_a_normal_table_row_and_a_second_trainer_is_refused(store, tmp_path):
    root = tmp_path / "runs"
    run = root / "hand-avgpool_lstm"  # a model without attention: the hand store has no frames to draw it on
    proc = train_process(store, run, epochs=2000, model="avgpool_lstm")
    try:
        wait_for_epochs(proc, run, 2)
        with pytest.raises(RunBusyError, match=f"^{run}: being trained by another process \\(pid {proc.pid}\\)"):
            resume_run(run, progress=False)  # the first process still trains it
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (run / "result.json").exists() and (run / "best.pt").is_file()
    done = len(RunDir(run).metrics())
    table = CliRunner().invoke(glimpse_cli, ["table", "--store", str(store), "--runs", str(root), "--models",
                                             "avgpool_lstm", "--no-train"])
    assert table.exit_code == 0, table.output
    assert f"| avgpool_lstm | unfinished: {done} of 2000 epochs | - |" in table.output, table.output
    resumed = resume_run(run, epochs=done + 1, progress=False)  # the kernel dropped the dead trainer's lock
    assert resumed.epochs == done + 1
    table = CliRunner().invoke(glimpse_cli, ["table", "--store", str(store), "--runs", str(root), "--models",
                                             "avgpool_lstm", "--no-train"])
    assert table.exit_code == 0 and f"| avgpool_lstm | {resumed.test_accuracy:.3f} |" in table.output, table.output


def test_the_table_names_each_model_before_it_trains(store, tmp_path):
    table = CliRunner().invoke(glimpse_cli, ["table", "--store", str(store), "--runs", str(tmp_path), "--models",
                                             "softmax,avgpool_lstm", "--epochs", "1", "--set", "hidden=8"])
    assert table.exit_code == 0, table.output
    first, second = (table.output.find(f"table {i}/2: training {m} -> {tmp_path / f'hand-{m}'}\n")
                     for i, m in ((1, "softmax"), (2, "avgpool_lstm")))
    assert 0 <= first < second and "| softmax |" in table.output and "| avgpool_lstm |" in table.output


@pytest.mark.slow
def test_resume_continues_from_the_previous_checkpoint_when_last_is_damaged(store, tmp_path):
    full = train_model(store, "softattn", tmp_path / "full", **{**SMALL, "epochs": 3})
    run = RunDir(tmp_path / "cut")
    train_model(store, "softattn", run.path, **SMALL)  # epochs 1 and 2: last.prev.pt holds epoch 1
    assert torch.load(run.file("last.prev.pt"), weights_only=True)["epoch"] == 1
    data = run.file("last.pt").read_bytes()
    run.file("last.pt").write_bytes(data[: len(data) // 2])  # truncated
    resumed = resume_run(run.path, epochs=3, progress=False)
    assert any(e.startswith(f"{run.file('last.pt')}: not a readable checkpoint: damaged") and
               e.endswith(f"continuing from the previous checkpoint {run.file('last.prev.pt')} (epoch 1, step 6)")
               for e in run.events()), run.events()
    same_metrics(tmp_path / "full", run.path)  # epochs 2 and 3 trained again from epoch 1, as a run that never broke
    assert resumed.test_accuracy == full.test_accuracy


def test_a_damaged_or_missing_last_checkpoint_without_a_previous_one_is_one_line(store, tmp_path):
    run = RunDir(tmp_path / "run")
    train_model(store, "softattn", run.path, **{**SMALL, "epochs": 1})
    run.file("last.pt").write_bytes(np.random.default_rng(0).bytes(4000))
    cli = CliRunner().invoke(train_cli, ["--resume", str(run.path), "--quiet"])
    assert cli.exit_code == 1, cli.output
    damaged = f"Error: {run.file('last.pt')}: not a readable checkpoint: damaged, or not a torch file"
    assert cli.output.strip() == damaged
    run.file("last.pt").unlink()
    with pytest.raises(RunFileError, match=f"^{run.file('last.pt')}: missing, though the run trained epochs"):
        resume_run(run.path, progress=False)


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue(store, tmp_path):
    run = tmp_path / "run"
    proc = train_process(store, run, epochs=2000)
    try:
        wait_for_epochs(proc, run, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)  # a loaded machine: the interrupt lands mid-step
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith(f"Error: {run}: interrupted in epoch ")
    assert err.strip().endswith(f"of 2000; continue with: python -m glimpse.train --resume {run}"), err


def test_a_moved_store_is_found_with_store_and_another_store_is_refused(store, tmp_path):
    here = tmp_path / "stores" / "hand"
    shutil.copytree(store, here)
    run = tmp_path / "run"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # the store given relative to the working directory: the run records where it is
        train_model("stores/hand", "softattn", run, **{**SMALL, "epochs": 1})
    finally:
        os.chdir(cwd)
    assert json.loads((run / "config.json").read_text())["store"]["path"] == str(here)
    moved = tmp_path / "elsewhere" / "hand"
    shutil.move(here, moved)
    lost = CliRunner().invoke(evaluate_cli, ["--run", str(run), "--figures", "0"])
    assert lost.exit_code == 1 and f"its store {here} is not there; if it moved, give --store" in lost.output
    evaluated = CliRunner().invoke(evaluate_cli, ["--run", str(run), "--figures", "0", "--store", str(moved)])
    assert evaluated.exit_code == 0, evaluated.output
    resumed = CliRunner().invoke(train_cli, ["--resume", str(run), "--store", str(moved), "--epochs", "2", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    config = json.loads((run / "config.json").read_text())
    assert config["store"]["path"] == config["train"]["store"] == str(moved)
    assert len(RunDir(run).metrics()) == 2 and any(e.startswith("store moved") for e in RunDir(run).events())
    other = hand_store(tmp_path / "other", streams=("rgb",), seed=5)
    refused = CliRunner().invoke(evaluate_cli, ["--run", str(run), "--store", str(other)])
    recorded = config["store"]["config_hash"]
    assert refused.exit_code == 1 and f"trained on {moved} of config hash {recorded}" in refused.output
    assert refused.output.count("\n") == 1, refused.output


def test_load_run_reads_the_checkpoint_on_the_cpu_then_moves_the_model(store, tmp_path):
    train_model(store, "softattn", tmp_path / "run", **{**SMALL, "epochs": 1})
    on_cpu = load_run(tmp_path / "run")
    elsewhere = load_run(tmp_path / "run", device="meta")  # a device whose tensors have no numpy view, as CUDA's
    assert elsewhere.device == "meta" and all(p.device.type == "meta" for p in elsewhere.model.parameters())
    assert on_cpu.normalization is not None and elsewhere.normalization is not None
    assert np.array_equal(elsewhere.normalization.mean["rgb"], on_cpu.normalization.mean["rgb"])


def test_the_random_state_covers_only_the_devices_the_run_uses(monkeypatch):
    """Where GPUs are visible, a CPU run neither reads nor sets a CUDA state, and a CUDA run keeps its own GPU's
    state only, which restores however many GPUs are visible then (an older checkpoint's (GPUs, N) too)."""
    def untouchable(*_args, **_kwargs):
        raise AssertionError("a CUDA random state was touched")

    set_on = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state_all", "set_rng_state_all", "get_rng_state", "init", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, untouchable)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_on.append((state.shape, device)))
    state = rng_state("cpu")
    assert set(state) == {"torch"}
    two_gpus = {**state, "cuda": torch.zeros(2, 16, dtype=torch.uint8)}  # saved where two GPUs were visible
    set_rng_state(two_gpus, "cpu")
    assert not set_on
    set_rng_state(two_gpus, "cuda")
    set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, "cuda")
    assert set_on == [(torch.Size([16]), "cuda")] * 2


def test_the_step_floor_starts_at_the_reference_stores_40_training_videos():
    def resolved(videos: int):
        return resolve(TrainConfig(store="s", model="softattn", out="o"), [30] * videos)

    few, notes = resolved(8)  # one 30-frame clip each: batches of 1, 8 an epoch
    assert (few.batch_size, few.epochs) == (1, 30)
    assert "30 epochs (240 steps), no 2000-step floor: 8 training videos (< 40)" in notes[-1]
    enough, notes = resolved(40)
    assert (enough.batch_size, enough.epochs) == (5, 250) and "250 epochs instead of 30" in notes[-1]


def make_dry_run(*assignments: str) -> str:
    """The commands ``make -n`` would run (the .venv bootstrap taken as done), on one line each."""
    out = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", *assignments], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return " ".join(out.replace("\\\n", " ").split())


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_the_makefile_joins_roots_with_or_without_a_slash_and_passes_store_backbone_and_train_args():
    for root in ("/data", "/data/"):
        assert "--root /data/ucf11 --lab /lab" in make_dry_run("extract", "DATASET=ucf11", f"DATA_ROOT={root}",
                                                                "STORE_ROOT=/lab")
    assert "--classes" not in make_dry_run("extract")  # no CLASSES: every class
    assert "--classes Biking,Diving" in make_dry_run("extract", "DATASET=ucf11", "CLASSES=Biking,Diving")
    assert "--run /r/ucf11-softattn" in make_dry_run("evaluate", "RUN_ROOT=/r", "DATASET=ucf11", "MODEL=softattn")
    assert "--run runs/synthetic-regattn --store /moved" in make_dry_run("evaluate", "STORE=/moved")
    train = make_dry_run("train", "DATASET=ucf11", "BACKBONE=vgg16", "RUN_ROOT=/r/", "TRAIN_ARGS=--epochs 3")
    assert "--dataset ucf11 --store-root stores --backbone vgg16 --model regattn --out /r/ucf11-regattn --epochs 3" \
        in train
    assert "--backbone" not in make_dry_run("train")  # the default backbone filters nothing
    assert "table --store /s/x --runs runs --epochs 3" in make_dry_run("table", "STORE=/s/x", "TRAIN_ARGS=--epochs 3")


def test_a_failed_run_is_shown_as_failed_and_not_trained_again(store, tmp_path):
    run = RunDir(tmp_path / "hand-avgpool_lstm")
    train_model(store, "avgpool_lstm", run.path, **{**SMALL, "epochs": 1})
    run.write_json("result.json", {"stopped": "nonfinite_loss", "error": "loss is nan at step 3"})  # as the loop does
    before = run.file("last.pt").stat().st_mtime_ns
    table = CliRunner().invoke(glimpse_cli, ["table", "--store", str(store), "--runs", str(tmp_path), "--models",
                                             "avgpool_lstm"])
    assert table.exit_code == 0, table.output
    assert f"| avgpool_lstm | failed: nonfinite_loss (see {run.file('events.log')}) | - |" in table.output
    assert run.file("last.pt").stat().st_mtime_ns == before
