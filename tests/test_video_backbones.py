"""Video backbones: every registered one through a real extraction into a store of clip-level grids, its steps' frames
and times against the clip rule written out here, r3d_18 against torchvision's own forward of a state_dict file, and
softattn training on such a store."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from extraction import extract, stores_per_backbone
from torchvision.transforms.v2 import functional as TF

from glimpse.extract.backbones import BACKBONES
from glimpse.extract.cli import main as extract_main
from glimpse.extract.video_backbones import VIDEO_BACKBONES, VideoBackboneSpec
from glimpse.media.decode import Sampling, decode_video
from glimpse.store import open_store
from glimpse.store.cli import main as store_main
from glimpse.store.maintenance import extraction_options
from glimpse.store.schema import VideoResult
from glimpse.train.loop import train_model

#: per backbone: the smallest input and clip that give a grid of K >= 2 on the tiny dataset's 10-frame videos, and
#: K there (S3D needs >= 14 frames, MViT exactly 16 at 224 px: their clips repeat a short video's last frame)
SMALL = {
    "r3d_18": (64, 4, 2, 4), "r2plus1d_18": (64, 4, 2, 4), "mc3_18": (64, 4, 3, 4),
    "s3d": (96, 14, 14, 3), "swin3d_t": (64, 4, 4, 2), "mvit_v2_s": (224, 16, 16, 7),
}  # name: (size, clip frames, clip stride, K)
#: extractions over a few seconds (MViT builds at 224 px in each worker) go to the slow tier
HEAVY = {"mvit_v2_s", "s3d", "swin3d_t"}
#: the 4 videos of one class: enough for the clip rule, the grid and an epoch of softattn
ONE_CLASS = {"classes": ("SquareRight",)}


def options_of(name: str) -> dict:
    size, frames, stride, _ = SMALL[name]
    return {"weights": "none", "batch_size": 8, "size": size, "clip_frames": frames, "clip_stride": stride,
            "group": 4, **ONE_CLASS}  # one task: one worker builds the network


@pytest.fixture(scope="module")
def extracted(tiny_synthetic, dask_client, tmp_path_factory):
    """Video backbone name -> its store of the tiny dataset with random weights, extracted once."""
    return stores_per_backbone(tiny_synthetic, lambda: tmp_path_factory.mktemp("video"), dask_client, options_of)


def test_every_video_backbone_is_registered_beside_the_2d_ones():
    assert set(SMALL) == set(VIDEO_BACKBONES) and all(BACKBONES[name] is VIDEO_BACKBONES[name] for name in SMALL)
    assert all(isinstance(spec, VideoBackboneSpec) and spec.grid == 7 for spec in VIDEO_BACKBONES.values())


def clip_rule(n: int, frames: int, stride: int) -> list[tuple[int, int]]:
    """Positions (first, last) of each clip among n decoded frames: one every ``stride`` frames while it fits
    whole; one clip of all frames for a video shorter than a clip."""
    if n < frames:
        return [(0, n - 1)]
    return [(start, start + frames - 1) for start in range(0, n - frames + 1, stride)]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in SMALL])
def test_every_video_backbone_extracts_a_grid_per_clip_with_the_frames_it_covers(name, extracted):
    out = extracted(name)
    store = open_store(out)
    size, frames, stride, k = SMALL[name]
    info = store.stream_info["rgb"]
    assert info.frame_shape == (VIDEO_BACKBONES[name].channels, k, k) and k >= 2
    assert info.clip == (frames, stride) and store.config["clip_frames"] == frames
    assert extraction_options(out)[0]["clip_frames"] == frames  # store repair extracts the same clips
    shown = CliRunner().invoke(store_main, ["info", str(out)]).output
    assert f"{name} / {VIDEO_BACKBONES[name].layer}, grid {k} x {k} of" in shown
    assert f"a step per clip of {frames} frames every {stride}" in shown
    for entry in store.videos:
        decoded = decode_video(entry.path, Sampling())  # every frame: the clips are cut from them
        rule = clip_rule(len(decoded.indices), frames, stride)
        cube = store.read(entry.id, "rgb")
        assert info.frame_shape is not None and cube.shape == (len(rule), *info.frame_shape)
        assert np.isfinite(cube).all() and cube.any()
        assert entry.n_frames == len(rule)
        assert entry.spans() == tuple((int(decoded.indices[a]), int(decoded.indices[b])) for a, b in rule)
        assert entry.time_spans() == tuple((float(decoded.timestamps[a]), float(decoded.timestamps[b]))
                                           for a, b in rule)
        assert entry.frame_indices == tuple(int(decoded.indices[(a + b) // 2]) for a, b in rule)
        boxes = np.asarray(json.loads(Path(entry.path).with_suffix(".boxes.json").read_text())["boxes"], float)
        covered = [boxes[decoded.indices[a : b + 1]] for a, b in rule]  # (N, 4) per step: the frames it covers
        union = [[*frame_boxes[:, :2].min(axis=0), *frame_boxes[:, 2:].max(axis=0)] for frame_boxes in covered]
        np.testing.assert_array_equal(np.asarray(entry.boxes), union)  # localisation's target: the clip's boxes


def test_a_store_without_steps_reads_each_frame_as_its_own_step():
    old = VideoResult.from_dict({"status": "done", "n_frames": 2, "frame_indices": [3, 9], "timestamps": [0.1, 0.3]})
    assert old.step_frames is None and old.spans() == ((3, 3), (9, 9)) and old.time_spans() == ((0.1, 0.1), (0.3, 0.3))


def test_r3d_from_a_state_dict_file_is_torchvisions_own_forward_averaged_over_time(tiny_synthetic, dask_client,
                                                                                   tmp_path):
    """--weights PATH of a torchvision r3d_18: each step is layer4 of torchvision's forward on its clip (Kinetics
    normalisation, antialiased resize), averaged over the clip's time axis."""
    torch.manual_seed(1)
    reference = torchvision.models.video.r3d_18().eval()
    torch.save(reference.state_dict(), tmp_path / "r3d.pth")
    out = tmp_path / "r3d"
    assert not extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, backbone="r3d_18",
                       **{**options_of("r3d_18"), "weights": str(tmp_path / "r3d.pth")}).failed
    store = open_store(out)
    assert (store.metadata.weights or "").startswith("sha256:")
    entry = store.videos[0]
    frames = decode_video(entry.path, Sampling()).frames  # (T, H, W, 3)
    chw = TF.to_dtype(torch.from_numpy(frames).permute(0, 3, 1, 2), torch.float32, scale=True)
    images = TF.normalize(TF.resize(chw, [64, 64], antialias=True), mean=[0.43216, 0.394666, 0.37645],
                          std=[0.22803, 0.22145, 0.216989])  # (T, 3, 64, 64)
    clips = torch.stack([images[a : b + 1].transpose(0, 1) for a, b in clip_rule(len(frames), 4, 2)])  # (n, 3, 4, ..)
    with torch.no_grad():
        x = reference.stem(clips)
        for stage in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            x = stage(x)  # (n, 512, T', 4, 4) at the end
    expected = x.mean(dim=2).numpy().astype(np.float16)  # (n, 512, 4, 4)
    np.testing.assert_allclose(store.read(entry.id, "rgb"), expected, rtol=2e-3, atol=2e-3)


def test_softattn_trains_on_a_video_backbone_store(extracted, tmp_path):
    result = train_model(extracted("r3d_18"), "softattn", tmp_path / "run", epochs=1, batch_size=2, workers=0,
                         progress=False, model_args={"hidden": 8})
    assert result.epochs == 1 and 0 <= result.test_accuracy <= 1


@pytest.mark.parametrize("args, says", [
    (["--backbone", "googlenet", "--clip-frames", "8"], "are for video backbones"),
    (["--backbone", "mvit_v2_s", "--clip-frames", "8"], "exactly 16 frames"),
    (["--backbone", "s3d", "--clip-frames", "8"], "at least 14 frames"),
    (["--backbone", "r3d_18", "--flow", "farneback"], "rgb stream alone"),
    (["--backbone", "mvit_v2_s", "--size", "112"], "are too small"),
])
def test_clip_options_that_do_not_fit_are_refused_in_one_line(tiny_synthetic, tmp_path, args, says):
    base = ["--dataset", "synthetic", "--root", str(tiny_synthetic), "--out", str(tmp_path / "s"), "--weights", "none"]
    result = CliRunner().invoke(extract_main, [*base, *args])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_the_attention_strip_of_a_clip_store_names_the_frames_each_step_covers(extracted):
    """Evaluation's strip draws each step on its clip's middle frame and captions the frames and times it covers."""
    from glimpse.evaluate.figures import stored_frames, video_strip

    entry = open_store(extracted("r3d_18")).videos[0]
    k = SMALL["r3d_18"][3]
    frames = stored_frames(entry)  # (steps, H, W, 3): the middle frames
    assert len(frames) == entry.n_frames == 4  # 10 frames, clips of 4 every 2
    fig = video_strip(entry, frames, {"softattn": np.full((4, k, k), 1 / k**2)}, steps=None)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4 and "2-5" in titles[1] and "0.08-0.20 s" in titles[1], titles
