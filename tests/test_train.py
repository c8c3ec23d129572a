"""The training service: real stores (extracted from real videos, and hand-written ones), real models, real runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from extraction import extract
from reliability_log import record
from store_files import rewrite_stream

from glimpse.store import VideoRecord, create_store, open_store
from glimpse.store.layout import video_key
from glimpse.train.aggregation import aggregate
from glimpse.train.cli import main
from glimpse.train.clips import Video, hold_out
from glimpse.train.config import ConfigError, TrainConfig, parse_model_args, resolve
from glimpse.train.data import parse_bytes
from glimpse.train.loop import NonFiniteLossError, drop_step, lr_at, resume_run, train_model
from glimpse.train.models import MODELS, build_model
from glimpse.train.predict import load_run, predict_run
from glimpse.train.run import TIMING_COLUMNS, RunDir
from glimpse.train.sampling import Segments

TINY_EXTRACT = {"backbone": "googlenet", "weights": "none", "size": 64, "frames": 6, "batch_size": 8}
#: a run small enough for seconds on two cores
FAST = {"epochs": 2, "batch_size": 2, "workers": 0, "progress": False, "lr": 1e-3}


def small_args(model: str) -> dict:
    """The smallest hidden size each model takes (all of them have one)."""
    fields = MODELS[model].config.__dataclass_fields__
    return {"hidden": 8} if "hidden" in fields else {}


@pytest.fixture(scope="module")
def tiny_store(tiny_synthetic, dask_client, tmp_path_factory) -> Path:
    """The tiny synthetic dataset through the real extraction stage: 12 videos of 6 frames, 1024 x 2 x 2 cubes."""
    out = tmp_path_factory.mktemp("train_store") / "tiny"
    summary = extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, **TINY_EXTRACT)
    assert not summary.failed
    return out


def hand_store(path: Path, classes=("a", "b", "c"), per_class=6, frames=7, streams=("rgb", "flow_cnn"),
               frame_shape=(6, 3, 3), multi_label=False, seed=0) -> Path:
    """A store written directly: each class lights up its own channel at a class-specific position.

    Groups of 2 clips per class; the first group of each class is test. Multi-label videos also
    carry the next class's label and signal. One extra video is recorded as failed.
    """
    records, rng = [], np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for i in range(per_class):
            labels = (k, (k + 1) % len(classes)) if multi_label and i % 2 else (k,)
            role = "test" if i < 2 else "train"
            records.append(VideoRecord(id=f"{name}/v{i}", path=f"/v/{name}{i}.avi", labels=labels,
                                       splits={"1": role}, group=f"{name}/g{i // 2}"))
    records.append(VideoRecord(id="a/broken", path="/v/broken.avi", labels=(0,), splits={"1": "train"}))
    writer = create_store(path, dataset="hand", classes=classes, records=records,
                          config={"dataset": "hand", "seed": seed},
                          streams={s: {"frame_shape": list(frame_shape)} for s in streams})
    for r in records[:-1]:
        arrays = {}
        for s in streams:
            cube = rng.standard_normal((frames, *frame_shape)).astype(np.float32)  # (T, C, K, K)
            for lab in r.labels:
                cube[:, lab, lab % frame_shape[1], lab % frame_shape[2]] += 3.0
            arrays[s] = cube
        writer.write_video(video_key(r.id), arrays, {"n_frames": frames, "frame_indices": list(range(frames)),
                                                     "timestamps": [t / 25 for t in range(frames)]})
    writer.write_failure(video_key("a/broken"), "/v/broken.avi: decoder said no")
    return path


@pytest.fixture(scope="module")
def two_stream_store(tmp_path_factory) -> Path:
    return hand_store(tmp_path_factory.mktemp("hand") / "two")


def same_metrics(a: Path, b: Path) -> None:
    rows_a, rows_b = RunDir(a).metrics(), RunDir(b).metrics()
    assert len(rows_a) == len(rows_b)
    for x, y in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMING_COLUMNS} == \
            {k: v for k, v in y.items() if k not in TIMING_COLUMNS}


# ---------------------------------------------------------------------------------------------- sampling


def test_validation_is_held_out_by_group_and_keeps_every_class():
    videos = [Video(f"c{c}/g{g}/v{i}", "k", (c,), 10, f"c{c}/g{g}") for c in range(3) for g in range(4)
              for i in range(3)]
    train, val, groups = hold_out(videos, 0.25, seed=0)
    assert {v.group for v in train}.isdisjoint({v.group for v in val}) and set(groups) == {v.group for v in val}
    assert {v.label for v in val} == {0, 1, 2} and {v.label for v in train} == {0, 1, 2}
    assert len(train) + len(val) == len(videos) and len(val) == 9  # one group of 3 per class
    assert hold_out(videos, 0.25, seed=0) == (train, val, groups)
    single = [v for v in videos if v.group.endswith("g0")]  # one group per class: nothing can be held out
    assert hold_out(single, 0.25, seed=0)[1] == []


# ---------------------------------------------------------------------------------------------- config


def test_config_resolves_each_papers_defaults_and_adapts_clips_to_short_stores():
    def resolved(model, **kw):
        return resolve(TrainConfig(store="s", model=model, out="o", **kw), [12, 10])

    soft, notes = resolved("softattn")
    assert (soft.optimizer, soft.lr, soft.aggregation, soft.stride, soft.frames) == ("adam", 1e-4, "mean", 1, 12)
    assert soft.sampling == "windows" and "clip length adapted" in notes[0]
    assert "batch size adapted from the paper's 128 to 1" in notes[1]
    reg, _ = resolved("regattn")
    assert (reg.aggregation, reg.sampling, reg.stride, reg.frames) == ("vote", "segments", 2, 12)
    han, _ = resolved("han")
    assert (han.optimizer, han.lr) == ("adadelta", 1.0)
    cham, _ = resolve(TrainConfig(store="s", model="cham", out="o"), [100] * 2000)  # a store the size of HMDB-51
    assert (cham.frames, cham.batch_size, cham.lr_drop_step, cham.lr_drop_to) == (60, 64, 10_000, 1e-5)
    big = {m: resolve(TrainConfig(store="s", model=m, out="o"), [300] * 4000)[0].batch_size
           for m in ("softattn", "softattn_code", "cham", "han", "regattn")}
    assert big == {"softattn": 128, "softattn_code": 128, "cham": 64, "han": 128, "regattn": 256}  # the papers'
    small, notes = resolve(TrainConfig(store="s", model="softattn", out="o"), [30] * 40)
    assert (small.batch_size, small.epochs) == (5, 250) and "250 epochs instead of 30" in notes[1]  # 2,000 steps
    assert resolve(TrainConfig(store="s", model="softattn", out="o"), [30] * 10_000)[0].epochs == 30
    fixed, notes = resolved("softattn", frames=30, optimizer="sgd", batch_size=16, epochs=3)
    assert fixed.frames == 30 and not notes and fixed.lr == 1e-2 and fixed.batch_size == 16
    # CHAM's drop after 10,000 iterations, or after 2/3 of a run too short to reach it
    assert drop_step(cham, 150_000) == 10_000 and drop_step(cham, 300) == 200 and drop_step(soft, 300) == 0
    assert [lr_at(cham, step, 300) for step in (0, 199, 200, 299)] == [1e-4, 1e-4, 1e-5, 1e-5]
    assert parse_model_args("regattn", ["lambda=1e-3", "blocks=2", "stride=none"]) == \
        {"lam": 1e-3, "blocks": 2, "stride": None}
    with pytest.raises(ConfigError, match="hidden, blocks, stride, layout, penalty, attention, lam"):
        parse_model_args("regattn", ["layers=2"])
    assert parse_bytes("8GB") == 8 * 2**30 and parse_bytes("512MB") == 2**29


# ---------------------------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_and_predicts_from_a_two_stream_store(name, two_stream_store, tmp_path):
    result = train_model(two_stream_store, name, tmp_path / "run", **{**FAST, "epochs": 1},
                         model_args=small_args(name))  # regattn: the 3x3 map takes N = 1 block
    assert result.epochs == 1 and 0 <= result.test_accuracy <= 1
    preds = list(predict_run(tmp_path / "run"))
    assert len(preds) == 6 and all(p.scores.shape == (3,) for p in preds)
    if MODELS[name].attention:
        assert preds[0].attention is not None and preds[0].attention.shape[-2:] == (3, 3)


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if "flow_cnn" in spec.streams])
def test_a_store_without_flow_fails_before_training_naming_what_to_extract(name, tiny_store, tmp_path):
    with pytest.raises(ConfigError, match=r"flow_cnn.*--flow tvl1"):
        train_model(tiny_store, name, tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_han_reads_flow_stack_where_the_store_has_it_and_says_flow_cnn_is_no_motion_network(two_stream_store,
                                                                                                tmp_path, caplog):
    stacked = hand_store(tmp_path / "stacked", streams=("rgb", "flow_cnn", "flow_stack"))
    train_model(stacked, "han", tmp_path / "stack", **{**FAST, "epochs": 1}, model_args=small_args("han"))
    config = json.loads((tmp_path / "stack" / "config.json").read_text())
    assert config["data"]["streams"] == config["model"]["config"]["streams"] == ["rgb", "flow_stack"]
    assert not any("not a motion network" in note for note in config["notes"])
    assert list(predict_run(tmp_path / "stack"))  # the run loads and reads flow_stack back
    with caplog.at_level("WARNING", logger="train"):
        train_model(two_stream_store, "han", tmp_path / "cnn", **{**FAST, "epochs": 1}, model_args=small_args("han"))
    warned = [r.getMessage() for r in caplog.records if "not a motion network" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "han: the temporal stream is flow_cnn" in warned[0]
    config = json.loads((tmp_path / "cnn" / "config.json").read_text())
    assert config["data"]["streams"] == ["rgb", "flow_cnn"] and warned[0] in config["notes"]


# ---------------------------------------------------------------------------------------------- runs


def test_cli_run_directory_explains_itself(tiny_store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--store", str(tiny_store), "--model", "softattn", "--out", str(out),
                                       "--epochs", "2", "--batch-size", "2", "--set", "hidden=8", "--lambda", "0.5",
                                       "--workers", "0", "--seed", "3"])
    assert result.exit_code == 0, result.output
    # the summary; output that is not a terminal gets no redrawn progress bar, the log a line per epoch
    assert "test accuracy" in result.output and "\r" not in result.output
    assert "epoch 2: train loss" in (out / "events.log").read_text() and "clips/s)" in (out / "events.log").read_text()
    config = json.loads((out / "config.json").read_text())
    store = open_store(tiny_store)
    assert config["store"]["config_hash"] == store.config_hash and config["store"]["path"] == str(tiny_store)
    assert config["train"]["lr"] == 1e-4 and config["train"]["optimizer"] == "adam" and config["train"]["seed"] == 3
    assert config["train"]["frames"] == 6 and config["data"]["train"] == 6 and config["data"]["test"] == 6
    assert config["model"]["config"]["hidden"] == 8 and config["model"]["config"]["lam"] == 0.5
    rows = RunDir(out).metrics()
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["train_loss"]) > 0 for r in rows)
    for which in ("best", "last"):
        ckpt = torch.load(out / f"{which}.pt", weights_only=True)
        assert ckpt["model"] == "softattn" and ckpt["store"]["config_hash"] == store.config_hash
        model = build_model(ckpt["model"], **ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        assert set(ckpt["normalization"]["rgb"]) == {"mean", "std"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outcome = json.loads((out / "result.json").read_text())
    assert outcome["stopped"] == "completed" and outcome["test_videos"] == 6
    assert len((out / "test_predictions.csv").read_text().splitlines()) == 7
    events = RunDir(out).events()
    assert events[0].startswith("started softattn") and events[-1].startswith("finished")
    again = CliRunner().invoke(main, ["--store", str(tiny_store), "--model", "softattn", "--out", str(out)])
    assert again.exit_code != 0 and "--resume" in again.output  # a finished run is never overwritten


def test_dataset_name_finds_its_store_in_the_catalog(tiny_store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--dataset", "synthetic", "--store-root", str(tiny_store.parent), "--model",
                                       "softmax", "--out", str(out), "--epochs", "1", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["store"]["path"] == str(tiny_store)
    missing = CliRunner().invoke(main, ["--dataset", "ucf11", "--store-root", str(tiny_store.parent), "--model",
                                        "softmax"])
    assert missing.exit_code != 0 and "no store of dataset 'ucf11'" in missing.output


def test_same_seed_same_metrics_with_spawned_workers_and_with_the_ram_cache(tiny_store, tmp_path):
    options = {**FAST, "epochs": 2, "model_args": {"hidden": 8}, "seed": 5}
    train_model(tiny_store, "regattn", tmp_path / "a", **options)
    train_model(tiny_store, "regattn", tmp_path / "workers", **{**options, "workers": 1})
    train_model(tiny_store, "regattn", tmp_path / "cached", **{**options, "cache_ram": parse_bytes("1GB")})
    train_model(tiny_store, "regattn", tmp_path / "other", **{**options, "seed": 6})
    same_metrics(tmp_path / "a", tmp_path / "workers")
    same_metrics(tmp_path / "a", tmp_path / "cached")
    assert RunDir(tmp_path / "a").metrics()[0]["train_loss"] != RunDir(tmp_path / "other").metrics()[0]["train_loss"]


@pytest.mark.slow
def test_resume_finishes_a_stopped_run_and_keeps_what_it_learns(tiny_store, tmp_path):
    options = {**FAST, "epochs": 3, "model_args": {"hidden": 8}, "checkpoint_every": 1}
    full = train_model(tiny_store, "softattn", tmp_path / "full", **options)
    part = train_model(tiny_store, "softattn", tmp_path / "part", **{**options, "epochs": 1})
    assert part.epochs == 1
    with pytest.raises(ConfigError, match="only epochs"):
        resume_run(tmp_path / "part", lr=0.5)
    resumed = resume_run(tmp_path / "part", epochs=3)
    same_metrics(tmp_path / "full", tmp_path / "part")
    assert resumed.test_accuracy == full.test_accuracy
    assert any(e.startswith("resumed at epoch 2") for e in RunDir(tmp_path / "part").events())


def inside_an_epoch(path: Path) -> bool:
    """Whether the checkpoint at ``path`` exists and was taken inside an epoch after the first."""
    try:
        ckpt = torch.load(path, weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):  # not written yet
        return False
    return ckpt["epoch"] >= 1 and ckpt["batch"] > 0


@contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads in this process, then restore the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: every process whose metrics the resume test compares computes with one thread (OpenMP, MKL): the house rule
#: for exactness tests, since a thread count (and MKL's dynamic choice of one) can change a sum's order
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}


@pytest.mark.slow
@pytest.mark.reliability
def test_a_run_killed_with_sigkill_mid_epoch_and_resumed_ends_like_an_uninterrupted_one(tiny_store, tmp_path):
    options = {"epochs": 6, "batch_size": 1, "lr": 1e-3, "checkpoint_every": 2, "workers": 0}
    with torch_threads(1):
        full = train_model(tiny_store, "softattn", tmp_path / "full", **options, model_args={"hidden": 8},
                           progress=False)
    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "glimpse.train", "--store", str(tiny_store), "--model", "softattn",
            "--out", str(killed), "--set", "hidden=8", "--quiet"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **ONE_THREAD})
    try:
        deadline = time.monotonic() + 300
        while not inside_an_epoch(killed / "last.pt"):  # a checkpoint taken inside epoch 2 or later
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "result.json").exists()
    interrupted = torch.load(killed / "last.pt", weights_only=True)
    assert interrupted["epoch"] < 6
    with torch_threads(1):
        resumed = resume_run(killed, progress=False)
    same_metrics(tmp_path / "full", killed)
    assert resumed.test_accuracy == full.test_accuracy and resumed.best_epoch == full.best_epoch
    assert any(e.startswith("resumed at epoch") for e in RunDir(killed).events())
    record("crash", "SIGKILL of a training run (`python -m glimpse.train`) inside an epoch, then `--resume`",
           f"killed after a checkpoint at epoch {interrupted['epoch'] + 1} batch {interrupted['batch']}; the resumed "
           "run's metrics, best epoch and test accuracy equal an uninterrupted run's", crashes_survived=1)


def test_a_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    run = tmp_path / "run"
    train_model(store, "regattn", run, **{**FAST, "epochs": 1, "model_args": {"hidden": 8}})
    good = (run / "last.pt").read_bytes()
    s = open_store(store)
    victim = next(v for v in s.videos if v.splits["1"] == "train")
    rewrite_stream(store, victim.key, "rgb", lambda cube: np.full_like(cube, np.inf))  # a corrupt video: Inf
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(epoch 2, batch \d+\).*last\.pt"):
        resume_run(run, epochs=2)
    assert (run / "last.pt").read_bytes() == good
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert json.loads((run / "result.json").read_text())["stopped"] == "nonfinite_loss"


def test_multi_label_stores_train_with_bce_and_report_map(tmp_path):
    store = hand_store(tmp_path / "multi", multi_label=True, streams=("rgb",))
    result = train_model(store, "avgpool_lstm", tmp_path / "run", **{**FAST, "epochs": 1},
                         model_args={"hidden": 8})
    assert result.metric == "mAP" and 0 < result.test_score <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["multi_label"] is True


def test_the_paper_aggregations_mean_and_majority_vote():
    logits = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]]])  # (clips, T', classes)
    scores, predicted = aggregate(logits, "mean", multi_label=False)
    assert predicted == 0 and scores.sum() == pytest.approx(1.0)  # one confident block outweighs two unsure
    scores, predicted = aggregate(logits, "vote", multi_label=False)
    assert predicted == 1 and scores.tolist() == pytest.approx([1 / 3, 2 / 3, 0])  # two segments outvote one


def test_released_vote_is_the_codes_mode_of_window_votes_written_independently():
    from collections import Counter

    def released_code(logits, last_n):  # src/actrec.py: sum the last last_n steps' softmax, argmax, mode over windows
        votes = [int(np.argmax(torch.softmax(clip[-last_n:], -1).sum(0).numpy())) for clip in logits]
        counts = Counter(votes)
        return min(c for c in counts if counts[c] == max(counts.values()))  # scipy.stats.mode: lowest of the tied

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 6, 4, generator=generator) * 2  # (windows, steps, classes)
    logits[:, :3, 3] += 6.0  # early steps favour class 3: only an aggregation of every step sees it
    for last_n in (1, 2, 3):
        scores, predicted = aggregate(logits, "released_vote", False, last_n)
        assert predicted == released_code(logits, last_n)
        assert scores.sum() == pytest.approx(1.0)
    assert aggregate(logits, "released_vote", False, 6)[1] == released_code(logits, 6) == 3
    assert aggregate(logits, "released_vote", False, 2)[1] != 3
    tied = torch.tensor([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]], [[5.0, 0.0, 0.0]]]).repeat(2, 1, 1)[[0, 1, 1, 0]]
    assert aggregate(tied, "released_vote", False)[1] == released_code(tied, 1) == 1  # 2 votes each: the lower class


def test_softattn_code_tests_every_window_at_stride_one_and_trains_as_the_code():
    config, _ = resolve(TrainConfig(store="s", model="softattn_code", out="o"), [40] * 2000)
    assert (config.sampling, config.aggregation, config.optimizer, config.lr, config.epochs) == (
        "all_windows", "released_vote", "adam", 2e-4, 15)
    assert config.policy().cover(40).tolist() == [list(range(s, s + 30)) for s in range(11)]
    preset, notes = resolve(TrainConfig(store="s", model="softattn_code", out="o", preset="hmdb51"), [40] * 200)
    assert (preset.optimizer, preset.lr, preset.momentum) == ("sgd", pytest.approx(1.28e-3), 0.0)
    assert dict(preset.model_args) == {"att_layers": 3, "hidden": 1024, "last_n": 16}
    assert any("evaluate_hmdb51gln.py" in note for note in notes)
    with pytest.raises(ConfigError, match="no preset 'ucf11'; its presets: hmdb51, hollywood2"):
        TrainConfig(store="s", model="softattn_code", out="o", preset="ucf11")


def test_the_released_codes_decay_is_on_the_batch_sum_and_the_papers_on_the_mean():
    from glimpse.train.setup import make_optimizer

    for name, expected in (("softattn_code", 2 * 1e-5 / 128), ("softattn", 1e-5)):
        config, _ = resolve(TrainConfig(store="s", model=name, out="o", batch_size=128), [40] * 200)
        model = build_model(name, channels=8, size=2, classes=3, hidden=4)
        assert make_optimizer(config, model).param_groups[0]["weight_decay"] == pytest.approx(expected)


def test_chams_drop_fires_at_exactly_10000_in_a_longer_run_and_its_budget_scales_on_a_small_store():
    config, notes = resolve(TrainConfig(store="s", model="cham", out="o"), [100] * 200)
    assert config.lr_drop_step == 10_000 and config.patience == 0  # counted in iterations: no early stop
    assert drop_step(config, 12_000) == 10_000
    assert lr_at(config, 9_999, 12_000) == 1e-4 and lr_at(config, 10_000, 12_000) == 1e-5
    assert config.epochs * math.ceil(200 / config.batch_size) >= 15_000 and "budget of 15000 steps" in notes[-1]
    small, notes = resolve(TrainConfig(store="s", model="cham", out="o"), [100] * 40)  # 40 < 103 training videos
    steps = max(2000, round(15_000 * 40 / 103))  # 5,825: the stated rule
    assert small.lr_drop_step == round(10_000 * steps / 15_000)
    assert any(f"iteration budget scaled from 15,000 to {steps:,}" in note for note in notes)
    assert small.epochs == math.ceil(steps / math.ceil(40 / small.batch_size))
    assert drop_step(small, small.epochs * math.ceil(40 / small.batch_size)) == small.lr_drop_step


def test_load_run_rebuilds_the_best_model_and_predicts_like_the_run(tiny_store, tmp_path):
    train_model(tiny_store, "regattn", tmp_path / "run", **FAST, model_args={"hidden": 8})
    loaded = load_run(tmp_path / "run")
    assert loaded.name == "regattn" and loaded.aggregation == "vote" and loaded.clip == Segments(6, 2)
    preds = {p.id: p for p in predict_run(tmp_path / "run")}
    csv = (tmp_path / "run" / "test_predictions.csv").read_text().splitlines()[1:]
    classes = open_store(tiny_store).classes
    for line in csv:
        video, _labels, predicted, *_ = line.split(",")
        assert classes[preds[video].predicted] == predicted
