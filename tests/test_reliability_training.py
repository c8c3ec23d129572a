"""Hostile and lying files met by the training stage: a crafted checkpoint or a broken run config is refused with
the file's name and nothing in it runs; store metadata that lies about shapes fails verify naming the video, and
training and prediction skip that video with the reason logged instead of failing inside a DataLoader.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_train
import torch
from click.testing import CliRunner
from reliability_log import record
from store_files import edit_entry
from test_reliability import Boom
from test_train import FAST

from glimpse.evaluate.cli import main as evaluate_cli
from glimpse.store import open_store
from glimpse.store.maintenance import reindex_store
from glimpse.train.cli import main as train_cli
from glimpse.train.loop import resume_run, train_model
from glimpse.train.predict import load_run, predict_run
from glimpse.train.run import RunDir, RunFileError

REPO = Path(__file__).resolve().parents[1]
#: the tiny synthetic dataset through the real extraction stage (test_train's module fixture, run here once)
tiny_store = test_train.tiny_store
#: the file Boom's payload would create if it were ever unpickled
BOOM_MARKER = Path("/tmp/glimpse-hostile-marker")


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory) -> Path:
    """A finished one-epoch run on the tiny store (copy it before changing it)."""
    run = tmp_path_factory.mktemp("runs") / "avgpool_lstm"
    train_model(tiny_store, "avgpool_lstm", run, **{**FAST, "epochs": 1}, model_args={"hidden": 8})
    return run


def copy_run(trained: Path, tmp_path: Path) -> RunDir:
    shutil.copytree(trained, tmp_path / "run")
    return RunDir(tmp_path / "run")


def refused(path: Path, why: str) -> str:
    """A pytest.raises pattern: the message starts with the file's path, then says ``why``."""
    return "^" + re.escape(str(path)) + ": " + why


@pytest.mark.reliability
def test_a_checkpoint_crafted_to_run_code_is_refused_naming_the_file(trained, tmp_path):
    BOOM_MARKER.unlink(missing_ok=True)
    run = copy_run(trained, tmp_path)
    best = torch.load(run.file("best.pt"), weights_only=True)
    torch.save({**best, "note": Boom()}, run.file("best.pt"))  # a real checkpoint carrying a payload
    run.file("last.pt").write_bytes(pickle.dumps(Boom(), protocol=2))  # a bare pickle where last.pt belongs
    with pytest.raises(RunFileError, match=refused(run.file("last.pt"), "refused")):
        resume_run(run.path, epochs=2, progress=False)
    with pytest.raises(RunFileError, match=refused(run.file("best.pt"), "refused")):
        load_run(run.path)
    with pytest.raises(RunFileError, match=refused(run.file("best.pt"), "refused")):
        list(predict_run(run.path))
    cli = CliRunner().invoke(train_cli, ["--resume", str(run.path), "--quiet"])
    assert cli.exit_code == 1 and f"{run.file('last.pt')}: refused" in cli.output, cli.output
    assert not isinstance(cli.exception, RunFileError)  # a clean exit with the message, not a traceback
    evaluated = CliRunner().invoke(evaluate_cli, ["--run", str(run.path)])
    assert evaluated.exit_code == 1 and f"{run.file('best.pt')}: refused" in evaluated.output, evaluated.output
    assert not BOOM_MARKER.exists(), "a pickle in a checkpoint was executed"
    record("hostile file", "checkpoints crafted to run code when loaded: best.pt (a torch checkpoint carrying a "
           "pickled payload) and last.pt (a bare pickle)", "resume, load_run, predict_run, `python -m glimpse.train "
           "--resume` and `python -m glimpse.evaluate --run` refused them, naming the file; nothing executed",
           hostile_files_refused=2)


@pytest.mark.reliability
def test_a_broken_or_foreign_run_config_fails_resume_naming_the_file(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    config = run.file("config.json")
    good = config.read_text()
    saved = json.loads(good)
    checkpoint = run.file("last.pt").read_bytes()
    cases = {
        "cut short": (good[: len(good) // 2], "not valid JSON"),
        "an unknown training field": (json.dumps({**saved, "train": {**saved["train"], "warmup": 3}}),
                                      "unknown training field.s. warmup"),
        "a wrong kind of value": (json.dumps({**saved, "train": {**saved["train"], "epochs": "many"}}),
                                  "its training config is not valid"),
        "not a run's config": ("[1, 2, 3]", "not a run's config.json"),
    }
    for text, why in cases.values():
        config.write_text(text)
        with pytest.raises(RunFileError, match=refused(config, why)):
            resume_run(run.path, progress=False)
        cli = CliRunner().invoke(train_cli, ["--resume", str(run.path), "--quiet"])
        assert cli.exit_code == 1 and str(config) in cli.output, cli.output
    assert run.file("last.pt").read_bytes() == checkpoint  # nothing was trained or written
    record("bad input", "a run's config.json " + ", ".join(cases), "`--resume` refused each with the file's name "
           "and the reason; the run was left as it was", bad_inputs_tried=len(cases))


def lie_about_shapes(store: Path) -> tuple[str, str]:
    """Rewrite the metadata of two done videos of ``store`` so it no longer matches their chunks.

    A training video's rgb array metadata claims 4 x 4 maps (shape and chunk shape) while its chunk holds
    2 x 2 ones; a test video's n_frames claims 9 frames while its arrays hold 6. Returns their ids.
    """
    videos = open_store(store).videos
    wide = next(v for v in videos if v.splits["1"] == "train")
    long = next(v for v in videos if v.splits["1"] == "test")

    def wider(data: bytes) -> bytes:
        meta = json.loads(data)
        assert meta["shape"][1:] == [1024, 2, 2]
        meta["shape"][2:] = [4, 4]
        meta["chunk_grid"]["configuration"]["chunk_shape"][2:] = [4, 4]
        return json.dumps(meta).encode()

    def longer(data: bytes) -> bytes:
        meta = json.loads(data)
        assert meta["attributes"]["video"]["n_frames"] == 6
        meta["attributes"]["video"]["n_frames"] = 9
        return json.dumps(meta).encode()

    edit_entry(store, wide.key, "rgb/zarr.json", wider)
    edit_entry(store, long.key, "zarr.json", longer)
    reindex_store(store)  # a hostile store whose index tells the same lie as its attributes
    return wide.id, long.id


@pytest.mark.reliability
def test_store_metadata_that_lies_about_shapes_fails_verify_and_training_skips_it(tiny_store, tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    wide, long = lie_about_shapes(store)
    verify = subprocess.run([sys.executable, "-m", "glimpse.store", "verify", str(store)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr, verify.stderr[-3000:]
    reasons = dict(line.strip().split(": ", 1) for line in verify.stderr.splitlines() if line.startswith("  "))
    assert set(reasons) == {wide, long}, verify.stderr
    assert "per-frame shape (1024, 4, 4) but the store declares (1024, 2, 2)" in reasons[wide]
    assert "6 frames stored but n_frames is 9" in reasons[long]
    record("hostile file", "a store whose metadata lies about shapes: one video's array claims 4 x 4 maps its "
           "chunks do not hold, another's n_frames claims 9 of 6 frames", "`python -m glimpse.store verify` exits 1 "
           "naming both videos and why, no traceback", hostile_files_refused=2)

    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="train"):
        result = train_model(store, "avgpool_lstm", run, **{**FAST, "epochs": 1, "workers": 1},
                             model_args={"hidden": 8})  # a spawned DataLoader worker: no hang, no traceback
        predictions = list(predict_run(run))
    assert result.stopped == "completed"
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["skipped_unfit"] == sorted([wide, long])
    assert data["train"] + data["val"] == 5 and data["test"] == 5  # 6 + 6 done, one of each skipped
    assert {p.id for p in predictions} == {v.id for v in open_store(store).videos if v.splits["1"] == "test"} - {long}
    for video_id, why, times in ((wide, "per-frame shape (1024, 4, 4)", 1), (long, "n_frames is 9", 2)):
        logged = [r.getMessage() for r in caplog.records if f"skipped video {video_id}: " in r.getMessage()]
        assert len(logged) == times and all(why in line for line in logged), logged  # training (and prediction)
        assert any(video_id in e and why in e for e in RunDir(run).events())
    record("hostile file", "training and prediction on that store (DataLoader workers spawned)", "both lying "
           "videos skipped with the reason logged and noted in the run; trained and predicted on the other 10")
