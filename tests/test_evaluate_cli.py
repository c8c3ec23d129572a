"""The evaluation stage and the experiments above it (table, protocol) end to end: runs trained by the real
training service on a real extracted store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from extraction import extract

from glimpse.cli import main as glimpse_main
from glimpse.evaluate.cli import main
from glimpse.experiments import comparison_table, run_protocol
from glimpse.train.loop import train_model
from glimpse.train.predict import predict_run

FAST = {"epochs": 2, "batch_size": 4, "frames": 6, "workers": 0, "progress": False, "model_args": {"hidden": 16}}
STORE_OPTS = {"backbone": "googlenet", "weights": "none", "size": 64, "frames": 6, "batch_size": 8}


@pytest.fixture(scope="module")
def two_fold_store(tiny_synthetic, dask_client, tmp_path_factory):
    """The tiny dataset with a second split (train and test groups swapped), extracted."""
    root = tmp_path_factory.mktemp("folds") / "data"
    shutil.copytree(tiny_synthetic, root)
    lists = root / "ucfTrainTestlist"
    train = [line for line in lists.joinpath("trainlist01.txt").read_text().splitlines() if line.strip()]
    test = [line for line in lists.joinpath("testlist01.txt").read_text().splitlines() if line.strip()]
    label = {line.split()[0].split("/")[0]: line.split()[1] for line in train}
    lists.joinpath("trainlist02.txt").write_text("".join(f"{t} {label[t.split('/')[0]]}\n" for t in test))
    lists.joinpath("testlist02.txt").write_text("".join(line.split()[0] + "\n" for line in train))
    out = tmp_path_factory.mktemp("stores") / "folds"
    extract("synthetic", str(root), str(out), client=dask_client, **STORE_OPTS)
    return out


def test_evaluating_a_run_writes_everything_and_is_reproducible(two_fold_store, tmp_path):
    run = tmp_path / "run"
    train_model(two_fold_store, "softattn", run, **FAST)
    first = CliRunner().invoke(main, ["--run", str(run), "--figures", "2"])
    assert first.exit_code == 0, first.output
    assert "top-1" in first.output and "attention in box" in first.output
    metrics = json.loads((run / "evaluation" / "test_metrics.json").read_text())
    figures = sorted(p.name for p in (run / "evaluation" / "attention").iterdir())
    assert [name.rsplit(".", 1)[1] for name in figures] == ["gif", "mp4", "png"] * 2
    assert len({name.split("__")[0] for name in figures}) == 2  # two videos of two different classes
    again = CliRunner().invoke(main, ["--run", str(run), "--figures", "0"])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "evaluation" / "test_metrics.json").read_text()) == metrics  # same numbers twice
    assert metrics["videos"] == 6 and 0 <= metrics["top1"] <= 1  # 3 classes x 2 test videos
    steps = [(p.clip_logits.argmax(-1) == p.labels[0]).ravel() for p in predict_run(run)]  # each step's own call
    assert metrics["frame_top1"] == pytest.approx(float(np.concatenate(steps).mean()))
    assert "frame-level top-1" in first.output
    assert metrics["localization"]["videos"] == 6 and metrics["localization"]["uniform_mass"] > 0
    assert {p.name for p in (run / "evaluation").iterdir()} >= {"test_confusion.csv", "test_confusion.png"}
    assert not list((run / "evaluation" / "attention").iterdir())  # no stale figures from the first evaluation


def test_protocol_reports_mean_and_std_over_the_folds(two_fold_store, tmp_path):
    result = run_protocol(two_fold_store, "avgpool_lstm", tmp_path / "protocol", **FAST)
    assert sorted(result["folds"]) == ["1", "2"]
    top1 = [fold["top1"] for fold in result["folds"].values()]
    assert result["mean_top1"] == pytest.approx(np.mean(top1))
    assert result["std_top1"] == pytest.approx(np.std(top1, ddof=1))
    assert json.loads((tmp_path / "protocol" / "protocol.json").read_text())["mean_top1"] == result["mean_top1"]
    cli = CliRunner().invoke(glimpse_main, ["protocol", "--store", str(two_fold_store), "--model", "avgpool_lstm",
                                    "--out", str(tmp_path / "protocol")])  # both folds already trained: reused
    assert cli.exit_code == 0, cli.output
    assert "over 2 folds" in cli.output and "+-" in cli.output


def test_table_collects_every_chosen_model_and_names_what_a_store_cannot_feed(two_fold_store, tmp_path):
    defaults = {key: value for key, value in FAST.items() if key != "model_args"}  # softmax has no hidden size
    text = comparison_table(two_fold_store, tmp_path, ["softmax", "softattn", "han"],
                            per_model={"softattn": {"epochs": 1}}, **defaults)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split("|")[1].strip() for row in rows] == ["softmax", "softattn"]
    assert "han: not run, needs stream flow_cnn" in text
    assert (tmp_path / "table-synthetic.md").read_text() == text
    trained = {m: json.loads((tmp_path / f"synthetic-{m}" / "config.json").read_text())["train"]["epochs"]
               for m in ("softmax", "softattn")}
    assert trained == {"softmax": 2, "softattn": 1}  # per-model settings replace the shared ones for that model
    softattn = next(row for row in rows if "softattn" in row)
    header = next(line for line in text.splitlines() if line.startswith("| model")).split("|")
    cells = dict(zip((name.strip() for name in header), softattn.split("|"), strict=True))
    assert "(" in cells["attention mass in box (uniform)"]  # attention models show localisation against uniform
    assert cells["published"].strip() == "-"  # no paper reports a "synthetic" dataset


def test_a_store_of_a_papers_dataset_shows_the_published_number_beside_ours(tmp_path):
    """A hand-written store named ucf11: table and protocol print Sharma's Table 1 beside our rows."""
    from glimpse.store import VideoRecord, create_store
    from glimpse.store.layout import video_key

    rng = np.random.default_rng(0)
    records = [VideoRecord(id=f"c{k}/v{i}", path=f"/v/c{k}{i}.avi", labels=(k,), group=f"c{k}/g{i}",
                           splits={"1": "test" if i < 2 else "train"}) for k in range(2) for i in range(5)]
    writer = create_store(tmp_path / "store", dataset="ucf11", classes=("c0", "c1"), records=records,
                          config={"dataset": "ucf11"}, streams={"rgb": {"frame_shape": [4, 2, 2]}})
    for r in records:
        cube = rng.standard_normal((4, 4, 2, 2)).astype(np.float32)  # (T, C, K, K)
        cube[:, r.labels[0]] += 2.0
        writer.write_video(video_key(r.id), {"rgb": cube}, {"n_frames": 4, "frame_indices": list(range(4)),
                                                            "timestamps": [t / 25 for t in range(4)]})
    options = {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False, "val_fraction": 0.0,
               "model_args": {"hidden": 8}}
    text = comparison_table(tmp_path / "store", tmp_path / "runs", ["avgpool_lstm", "softattn"], figures=0, **options)
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    assert "published" in rows["model"][5] and "frame-level accuracy" in rows["model"][3]
    assert rows["avgpool_lstm"][5].strip() == "82.56% accuracy (Sharma 2015 Table 1)"  # the store names no backbone
    assert rows["softattn"][5].strip() == "84.96% accuracy (Sharma 2015 Table 1)"
    cli = CliRunner().invoke(glimpse_main, ["protocol", "--store", str(tmp_path / "store"), "--model", "avgpool_lstm",
                                    "--out", str(tmp_path / "protocol"), "--epochs", "1", "--set", "hidden=8"])
    assert cli.exit_code == 0, cli.output
    assert "published: 82.56% accuracy (Sharma 2015 Table 1)" in cli.output


def test_compare_draws_two_runs_side_by_side_and_refuses_runs_without_attention(two_fold_store, tmp_path):
    """regattn at lambda = 0 against lambda > 0 (Fig. 6 of Quan et al.): stacked strips, GIFs, MP4s per video."""
    from PIL import Image

    from glimpse.evaluate.figures import CAPTION, GAP, SCALE, TOP

    for name, lam in (("lam0", 0.0), ("lam1", 1e-2)):
        args = {"hidden": 16, "lam": lam}  # 64-pixel frames give a 2 x 2 grid: one block of 2 x 2
        train_model(two_fold_store, "regattn", tmp_path / name, **{**FAST, "model_args": args})
    args = ["compare", "--run", str(tmp_path / "lam0"), "--run", str(tmp_path / "lam1"), "--name", "lambda=0",
            "--name", "lambda=1e-2", "--videos", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "compare-lam0-vs-lam1"
    assert f"2 videos, strip + GIF + MP4 each, written to {out}" in result.output
    for suffix in ("png", "gif", "mp4"):
        assert len(list(out.glob(f"*_attention.{suffix}"))) == 2, suffix
    with Image.open(next(out.glob("*.png"))) as strip:
        assert strip.size[1] == TOP + 2 * (CAPTION + 64) + GAP + SCALE  # title, one strip per run, colour scale

    train_model(two_fold_store, "avgpool_lstm", tmp_path / "pooled", **FAST)
    refused = CliRunner().invoke(main, ["compare", "--run", str(tmp_path / "lam0"), "--run", str(tmp_path / "pooled")])
    assert refused.exit_code == 1 and "model avgpool_lstm gives no attention maps" in refused.output
    alone = CliRunner().invoke(main, ["compare", "--run", str(tmp_path / "lam0")])
    assert alone.exit_code == 1 and "at least two runs" in alone.output


def test_published_cells_mark_frame_level_numbers_and_another_backbone():
    from glimpse.evaluate.published import published_for

    report = published_for("convlstm_report", "hmdb51")
    assert report is not None and report.frame_level
    assert report.cell("vgg16_pool5").endswith("[frame-level]")
    cham = published_for("cham", "hmdb51")
    assert cham is not None and not cham.frame_level
    assert cham.cell("googlenet").endswith("[on resnet152, not googlenet]") and "[" not in cham.cell("resnet152")
    assert published_for("softattn", "ucf11").cell("googlenet") == "84.96% accuracy (Sharma 2015 Table 1)"
