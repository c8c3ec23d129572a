"""Each paper's training protocol: CHAM's Eq. 7 on unshifted features (rms standardization), convattn trained as CHAM
trained its baselines, Quan's full training set, the released code's validation rule, and `models` marking each
protocol value by its source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from glimpse.store import VideoRecord, create_store, open_store
from glimpse.store.layout import video_key
from glimpse.train.cli import main
from glimpse.train.config import TrainConfig, resolve
from glimpse.train.models import MODELS
from glimpse.train.models.base import PROTOCOL, SOURCES
from glimpse.train.setup import prepare

CHANNELS, K, FRAMES = 4, 3, 5


@pytest.fixture(scope="module")
def positive_store(tmp_path_factory) -> Path:
    """Two classes of 6 videos, features positive (as a ReLU backbone's are): each channel's mean is far from 0."""
    path = tmp_path_factory.mktemp("protocols") / "store"
    records = [VideoRecord(id=f"{c}/v{i}", path=f"/v/{c}{i}.avi", labels=(k,), splits={"1": "test" if i < 2 else
                                                                                      "train"}, group=f"{c}/g{i}")
               for k, c in enumerate("ab") for i in range(6)]
    writer = create_store(path, dataset="hand", classes=("a", "b"), records=records,
                          config={"dataset": "hand", "seed": 0}, streams={"rgb": {"frame_shape": [CHANNELS, K, K]}})
    rng = np.random.default_rng(0)
    for r in records:
        cube = (1 + 3 * rng.random((FRAMES, CHANNELS, K, K))).astype(np.float32)  # (T, C, K, K), in [1, 4)
        cube[:, r.labels[0]] += 2.0
        writer.write_video(video_key(r.id), {"rgb": cube}, {"n_frames": FRAMES, "frame_indices": list(range(FRAMES)),
                                                            "timestamps": [t / 25 for t in range(FRAMES)]})
    return path


def run_normalization(store: Path, model: str, tmp_path: Path, **options):
    """The standardization a run of ``model`` on ``store`` uses, and its training videos' stored cubes."""
    setup = prepare(TrainConfig(store=str(store), model=model, out=str(tmp_path / model), workers=0,
                                model_args={"hidden": 4}, **options))
    norm = setup.train_dataset.normalization
    assert norm is not None
    reader = open_store(store)
    cubes = np.stack([reader.stream(v.id, "rgb").read() for v in setup.selection.train]).astype(np.float64)
    return setup.config, norm, cubes  # cubes: (N, T, C, K, K)


def test_rms_standardization_keeps_chams_zero_attention_at_zero_where_mean_std_does_not(positive_store, tmp_path):
    config, norm, cubes = run_normalization(positive_store, "convattn", tmp_path)
    assert config.standardize == "rms" == MODELS["cham"].standardize == MODELS["convlstm_report"].standardize
    rms = np.sqrt(np.square(cubes).mean((0, 1, 3, 4)))  # (C,), written independently: no mean shift
    assert np.array_equal(norm.mean["rgb"], np.zeros(CHANNELS, np.float32))
    assert np.allclose(norm.std["rgb"], rms, rtol=1e-5)

    raw = torch.from_numpy(cubes[0, 0]).float()  # (C, K, K), one frame
    a = torch.rand(1, K, K)
    a[0, 1, 1] = 0.0  # no attention on the centre cell
    for standardization, keeps_zero in (("rms", True), ("mean_std", False)):
        _, norm, _ = run_normalization(positive_store, "convattn", tmp_path, standardize=standardization)
        mean = torch.from_numpy(norm.mean["rgb"])[:, None, None]  # (C, 1, 1)
        std = torch.from_numpy(norm.std["rgb"])[:, None, None]
        model_input = a * norm.standardize("rgb", raw)  # what the ConvLSTM reads: a_t . X_t on standardized X
        eq7 = (a * raw - mean) / std  # Eq. 7 on the raw features, x_t = l_t * F_t, then standardized
        assert torch.allclose(model_input, eq7, atol=1e-5) is keeps_zero
        zero_cell = (torch.zeros(CHANNELS) - mean[:, 0, 0]) / std[:, 0, 0]  # a raw zero, standardized
        assert torch.equal(zero_cell == 0, torch.full((CHANNELS,), keeps_zero))
        assert torch.equal(model_input[:, 1, 1], torch.zeros(CHANNELS))  # the model's input there either way


def test_standardize_is_an_option_recorded_in_config_json(positive_store, tmp_path):
    for given, expected in ((None, "rms"), ("mean_std", "mean_std")):
        out = tmp_path / f"run-{expected}"
        args = ["--store", str(positive_store), "--model", "convattn", "--out", str(out), "--epochs", "1",
                "--batch-size", "4", "--workers", "0", "--quiet", "--set", "hidden=4"]
        result = CliRunner().invoke(main, [*args, *(["--standardize", given] if given else [])])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["train"]["standardize"] == expected
    _, norm, _ = run_normalization(positive_store, "softattn", tmp_path)
    assert float(np.abs(norm.mean["rgb"]).min()) > 1.0  # the other models keep mean_std
    bad = CliRunner().invoke(main, ["--store", str(positive_store), "--model", "cham", "--standardize", "l2"])
    assert bad.exit_code == 2 and "mean_std" in bad.output


def test_each_papers_protocol_defaults():
    big = [200] * 2000  # frames of each training video: a store the size of HMDB-51
    quan, _ = resolve(TrainConfig(store="s", model="regattn", out="o"), big)
    assert (quan.epochs, quan.val_fraction, quan.patience) == (10, 0.0, 0)  # the full training set, 10 epochs
    code, _ = resolve(TrainConfig(store="s", model="softattn_code", out="o"), big)
    assert (code.epochs, code.patience, code.val_fraction) == (15, 0, 0.15)  # no early stop, best validation kept
    conv, conv_notes = resolve(TrainConfig(store="s", model="convattn", out="o"), [100] * 40)
    cham, cham_notes = resolve(TrainConfig(store="s", model="cham", out="o"), [100] * 40)
    assert (conv.sampling, conv.frames, conv.patience) == ("random", 30, 0)
    assert resolve(TrainConfig(store="s", model="convattn", out="o"), big)[0].batch_size == 64
    assert conv.lr_drop_step == cham.lr_drop_step and conv.lr_drop_to == cham.lr_drop_to == 1e-5
    scaled = [n for n in conv_notes if "iteration budget scaled" in n]
    assert scaled and scaled == [n for n in cham_notes if "iteration budget scaled" in n]  # the same budget rule


def protocol_of(output: str) -> dict[str, dict[str, tuple[str, str]]]:
    """`models` output -> model -> setting -> (value, source), from the lines under each block's "protocol:"."""
    line = re.compile(r"^    ([a-z ]+):\s+(.*) \[(" + "|".join(SOURCES) + r")(?:: [^\]]*)?\]$")
    parsed = {}
    for block in output.strip().split("\n\n"):
        name, rows = block.split("\n", 1)[0], block.split("  protocol:\n", 1)[1].splitlines()
        parsed[name] = {m[1]: (m[2], m[3]) for m in map(line.match, rows) if m}
    return parsed


def test_models_prints_each_protocol_value_marked_by_its_source():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    protocols = protocol_of(result.output)
    assert set(protocols) == set(MODELS) and all(set(p) == set(PROTOCOL) for p in protocols.values())
    quan, code, conv = protocols["regattn"], protocols["softattn_code"], protocols["convattn"]
    assert quan["length"] == ("10 epochs (at least 2,000 steps from 40 training videos unless --epochs is given)",
                              "paper")
    assert quan["validation"][0].startswith("none: the full training set") and quan["validation"][1] == "paper"
    assert code["length"][0].startswith("15 epochs") and code["length"][1] == "released code"
    assert "no early stopping" in code["validation"][0] and code["validation"][1] == "released code"
    assert code["weight decay"] == ("1e-05 on the batch sum loss", "released code")
    assert conv["standardization"][0].startswith("rms") and conv["standardization"][1] == "ours"
    assert conv["length"][0].startswith("15,000 iterations, the drop at 10,000") and conv["length"][1] == "paper"
    assert protocols["softattn"]["standardization"] == ("mean_std: (x - mean) / std per channel", "ours")
