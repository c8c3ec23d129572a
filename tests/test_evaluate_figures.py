"""Attention figures over real decoded frames, re-decoding a real store's frames, confusion PNG.

The store test runs the real extraction stage on the tiny synthetic dataset, then an untrained model
of the registry through train.predict, and draws and scores its attention like the evaluate CLI will.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from glimpse.evaluate.figures import (
    BAND,
    BOX_COLOR,
    CAPTION,
    GAP,
    LEFT,
    MAX_WIDTH,
    MIN_WIDTH,
    RIGHT,
    SCALE,
    TOP,
    attention_gif,
    attention_mp4,
    attention_strip,
    compare_strips,
    confusion_png,
    decode_frames,
    heat_overlay,
    heat_peak,
    overlay_frames,
    step_labels,
    stored_frames,
    strip_figure,
    video_attention_figures,
    video_strip,
)
from glimpse.extract.synth import render_clip
from glimpse.media.decode import DecodeError, Sampling, decode_video
from glimpse.media.encode import write_video

K = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real synthetic clip: 6 frames of 64 x 64 with the target's boxes, encoded as H.264 and MPEG-4."""
    frames, boxes = render_clip("SquareRight", 64, 6, seed=11)
    folder = tmp_path_factory.mktemp("figures")
    return {"boxes": boxes, "mp4": write_video(folder / "clip.mp4", frames),
            "avi": write_video(folder / "clip.avi", frames),
            "frames": decode_video(folder / "clip.mp4", Sampling()).frames}


def maps_at(boxes: np.ndarray, far: bool = False) -> np.ndarray:
    """(T, K, K) maps peaked at the cell holding each box's centre (or at the cell diagonally opposite)."""
    maps = np.full((len(boxes), K, K), 0.01 / (K * K - 1))
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        row, col = int((y0 + y1) / 2 * K / 64), int((x0 + x1) / 2 * K / 64)
        maps[t, K - 1 - row if far else row, K - 1 - col if far else col] = 0.99
    return maps


@pytest.mark.parametrize("suffix", ["mp4", "avi"])
def test_decode_frames_gives_the_frames_decode_video_gives(clip, suffix):
    every = decode_video(clip[suffix], Sampling()).frames  # (6, 64, 64, 3)
    np.testing.assert_array_equal(decode_frames(clip[suffix], [5, 0, 3, 3]), every[[5, 0, 3, 3]])


def test_decode_frames_turns_rotated_video_upright(tmp_path):
    frames = np.zeros((4, 48, 64, 3), dtype=np.uint8)
    frames[:, :8, :16] = 255  # a white block in the top-left corner, landscape
    path = write_video(tmp_path / "turned.mp4", frames, rotation=90)
    out = decode_frames(path, [1, 2])
    assert out.shape == (2, 64, 48, 3)  # portrait, as players show it
    np.testing.assert_array_equal(out, decode_video(path, Sampling()).frames[[1, 2]])


def test_decode_frames_errors_name_the_file(clip, tmp_path):
    with pytest.raises(DecodeError, match=r"clip\.mp4: frame 9 asked for, the video has 6 frames"):
        decode_frames(clip["mp4"], [0, 9])
    with pytest.raises(DecodeError, match=r"gone\.mp4: file not found"):
        decode_frames(tmp_path / "gone.mp4", [0])


def test_overlay_is_hot_where_the_map_peaks(clip):
    frames, boxes = clip["frames"], clip["boxes"]
    hot = overlay_frames(frames, maps_at(boxes)).astype(int)  # (T, H, W, 3)
    cold = overlay_frames(frames, maps_at(boxes, far=True)).astype(int)
    inside = np.zeros(frames.shape[:3], dtype=bool)  # (T, H, W)
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        inside[t, y0:y1, x0:x1] = True
    red, blue = (hot - cold)[..., 0], (hot - cold)[..., 2]  # same frames: only the heat differs
    assert red[inside].mean() > 40 and blue[inside].mean() < -20  # jet: red where the map peaks, blue elsewhere
    far = np.zeros_like(inside)  # the cells where the far maps peak
    for t, (row, col) in enumerate(np.argwhere(maps_at(boxes, far=True) == 0.99)[:, 1:]):
        far[t, row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] = True
    assert red[far].mean() < -40


def tiles_of(fig) -> list:
    """The tile axes of a strip figure, in drawing order (the colour scale is the one axes without an image)."""
    return [ax for ax in fig.axes if ax.images]


def scale_of(fig):
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "colour scale"]
    return bar


def test_attention_strip_png(clip, tmp_path):
    frames, boxes = clip["frames"], clip["boxes"]
    labels = step_labels(range(6), 6, [t / 25 for t in range(6)])
    assert labels[2] == "step 3/6 \u00b7 0.08 s" and step_labels([2], 6, short=True) == ["3"]
    fig = strip_figure(frames, {"": maps_at(boxes)}, boxes=boxes, title="SquareRight", steps=labels)
    tiles = overlay_frames(frames, maps_at(boxes), boxes, peak=heat_peak(maps_at(boxes)))
    drawn = tiles_of(fig)
    assert [ax.get_title() for ax in drawn] == labels
    np.testing.assert_array_equal(np.asarray(drawn[2].images[0].get_array()), tiles[2])
    x0, y0 = boxes[2][:2]
    assert tuple(tiles[2][y0, x0]) == BOX_COLOR
    assert scale_of(fig).get_xlim() == (0, 0.99) and "uniform 1/16" in scale_of(fig).get_xlabel()
    assert [t.get_text() for t in fig.texts] == ["SquareRight"]
    out = attention_strip(frames, maps_at(boxes), tmp_path / "strip.png", boxes=boxes, title="SquareRight")
    assert Image.open(out).size == (MIN_WIDTH, TOP + CAPTION + 64 + SCALE)  # 6 tiles of 64 px: room for the scale
    wide = attention_strip(np.repeat(frames, 2, axis=2), maps_at(boxes), tmp_path / "wide.png")
    assert Image.open(wide).size == (LEFT + 6 * 128 + 5 * GAP + RIGHT, TOP + CAPTION + 64 + SCALE)
    two_rows = attention_strip(frames, maps_at(boxes), tmp_path / "rows.png", columns=4)
    assert Image.open(two_rows).size == (MIN_WIDTH, TOP + 2 * (CAPTION + 64) + SCALE)


def test_compare_strips_stacks_runs_on_one_colour_scale(clip, tmp_path):
    frames, boxes = clip["frames"], clip["boxes"]
    runs = {"lambda=0": np.full((6, K, K), 1 / K**2), "lambda=1e-4": maps_at(boxes)}
    fig = strip_figure(frames, runs, title="Fig. 6")
    drawn = tiles_of(fig)
    assert len(drawn) == 12 and [t.get_text() for t in fig.texts] == ["Fig. 6", "lambda=0", "lambda=1e-4"]
    for name, first in zip(runs, (drawn[0], drawn[6]), strict=True):  # both divided by the larger run's peak
        expected = overlay_frames(frames[:1], runs[name][:1], peak=0.99)[0]
        np.testing.assert_array_equal(np.asarray(first.images[0].get_array()), expected)
    out = compare_strips(frames, runs, tmp_path / "cmp.png", title="Fig. 6")
    assert Image.open(out).size == (MIN_WIDTH, TOP + 2 * (CAPTION + 64) + GAP + SCALE)


def test_a_720p_strip_is_at_most_2000_px_wide_and_says_what_it_shows(tmp_path):
    """A real 720p video made with PyAV, through the evaluate figure path: frames downscaled, colour scale, step
    times, true and predicted class, target box."""
    from glimpse.store.schema import VideoEntry

    rng = np.random.default_rng(2)
    frames = rng.integers(0, 255, (3, 720, 1280, 3), dtype=np.uint8)
    path = write_video(tmp_path / "hd.mp4", frames, fps=25)
    boxes = ((600.0, 300.0, 800.0, 500.0),) * 3
    entry = VideoEntry(id="Jump/hd", key="k", path=str(path), labels=(1,), splits={}, status="done", n_frames=3,
                       frame_indices=(0, 1, 2), timestamps=(0.0, 0.04, 0.08), boxes=boxes)
    maps = np.full((3, K, K), 0.04)
    maps[:, 1, 2] = 1 - 0.04 * 15
    classes, predicted = ["Run", "Jump", "Swim"], {"softattn": 2}
    fig = video_strip(entry, stored_frames(entry), {"softattn": maps}, classes=classes, predicted=predicted)
    assert fig.texts[0].get_text() == "Jump/hd\ntrue: Jump \u00b7 predicted: Swim"
    assert [ax.get_title() for ax in tiles_of(fig)] == ["step 1/3 \u00b7 0.00 s", "step 2/3 \u00b7 0.04 s",
                                                         "step 3/3 \u00b7 0.08 s"]
    assert scale_of(fig).get_xlim() == (0, pytest.approx(0.4))
    tile = np.asarray(tiles_of(fig)[0].images[0].get_array())
    assert tile.shape[1] < 1280 and tile.shape[0] / tile.shape[1] == pytest.approx(720 / 1280, abs=0.01)
    scale = tile.shape[1] / 1280
    assert tuple(tile[round(300 * scale), round(700 * scale)]) == BOX_COLOR  # the box, scaled with the frame
    paths = video_attention_figures(entry, {"softattn": maps}, tmp_path / "figs", classes=classes,
                                    predicted=predicted)
    with Image.open(paths["strip"]) as strip:
        assert strip.size[0] <= MAX_WIDTH and strip.size[1] < 600
    with Image.open(paths["gif"]) as gif:
        assert gif.size[0] <= 480


def test_attention_gif_has_one_frame_per_step(clip, tmp_path):
    frames, boxes = clip["frames"], clip["boxes"]
    with Image.open(attention_gif(frames, maps_at(boxes), tmp_path / "one.gif", boxes=boxes)) as gif:
        assert gif.n_frames == 6 and gif.size == (64, BAND + 64) and gif.info["loop"] == 0
    runs = {"a": maps_at(boxes), "b": maps_at(boxes, far=True)}
    with Image.open(attention_gif(frames, runs, tmp_path / "two.gif")) as gif:
        assert gif.n_frames == 6 and gif.size == (128, 2 * BAND + 64)


def test_attention_mp4_decodes_to_the_gif_frames(clip, tmp_path):
    """The MP4 holds one frame per step, padded to even sizes, and shows what the GIF shows."""
    frames, boxes = clip["frames"], clip["boxes"]
    runs = {"a": maps_at(boxes), "b": maps_at(boxes, far=True)}
    out = attention_mp4(frames, runs, tmp_path / "two.mp4", boxes=boxes)
    video = decode_video(out, Sampling()).frames  # (6, H, W, 3)
    assert video.shape == (6, 2 * BAND + 64, 128, 3)  # 2 * BAND + 64 is even already
    with Image.open(attention_gif(frames, runs, tmp_path / "two.gif", boxes=boxes)) as gif:
        gif.seek(3)
        expected = np.asarray(gif.convert("RGB"), dtype=np.float64)
    assert np.abs(video[3].astype(np.float64) - expected).mean() < 6  # lossy H.264 of the same picture
    odd = attention_mp4(frames[:, :63], maps_at(boxes), tmp_path / "odd.mp4")
    assert decode_video(odd, Sampling()).frames.shape == (6, BAND + 64, 64, 3)  # 63 rows + band, padded to even


def test_a_nearly_uniform_map_stays_cool_and_a_peaked_one_turns_red():
    frame = np.full((64, 64, 3), 128, dtype=np.uint8)
    flat = np.full((K, K), 1 / K**2)
    flat[0, 0] *= 1.05  # a small wiggle that max-normalisation would stretch into a red peak
    flat /= flat.sum()
    assert heat_overlay(frame, flat, alpha=1.0)[..., 2].min() > 200  # jet's blue end: blue-cyan everywhere
    peaked = np.full((K, K), 0.5 / (K * K - 1))
    peaked[1, 2] = 0.5
    drawn = heat_overlay(frame, peaked, alpha=1.0)
    assert drawn[20:28, 36:44, 2].max() < 50 and drawn[56:, :8, 2].min() > 150  # red at the peak, blue far off


def test_mismatched_inputs_are_refused(clip, tmp_path):
    with pytest.raises(ValueError, match="T = 6 frames"):
        attention_strip(clip["frames"], np.full((5, K, K), 1 / 16), tmp_path / "x.png")
    with pytest.raises(ValueError, match="5 boxes for 6 frames"):
        attention_gif(clip["frames"], np.full((6, K, K), 1 / 16), tmp_path / "x.gif", boxes=clip["boxes"][:5])


def test_confusion_png(tmp_path):
    out = confusion_png(np.array([[3, 1, 0], [0, 2, 2], [1, 0, 4]]), ["run", "jump", "swim"], tmp_path / "c.png",
                        title="test")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (400, 400)
    with pytest.raises(ValueError, match=r"c2\.png: confusion matrix is \(2, 2\)"):
        confusion_png(np.eye(2), ["a", "b", "c"], tmp_path / "c2.png")


def test_store_frames_attention_figures_and_scores(tiny_synthetic, dask_client, tmp_path):
    """Real extraction -> store; re-decoded frames are the ones extraction used; a real model's maps drawn."""
    import torch
    from extraction import extract

    from glimpse.evaluate.localization import frame_attention, localization_scores
    from glimpse.evaluate.metrics import prediction_metrics
    from glimpse.store import open_store
    from glimpse.train.clips import Video
    from glimpse.train.data import FeatureReader, VideoDataset, targets_for
    from glimpse.train.models import build_model
    from glimpse.train.predict import predict_videos
    from glimpse.train.sampling import Windows as Clip

    out = tmp_path / "store"
    extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, backbone="googlenet",
                    weights="none", size=64, frames=6, batch_size=8)
    store = open_store(out)
    done = [e for e in store.videos if e.status == "done"]
    assert len(done) == 12
    for entry in done:
        used = decode_video(entry.path, Sampling(frames=6))
        assert list(entry.frame_indices) == used.indices.tolist()
        np.testing.assert_array_equal(stored_frames(entry), used.frames, err_msg=entry.id)

    torch.manual_seed(0)
    channels, grid = store.streams["rgb"]["frame_shape"][:2]
    model = build_model("softattn", channels=channels, size=grid, classes=len(store.classes), hidden=16, layers=1)
    clip = Clip(frames=4)  # 6 frames -> clips [0..3], [2..5]: frames 2, 3 seen twice
    videos = [Video(e.id, e.key, e.labels, e.n_frames, e.group) for e in done[:3]]
    dataset = VideoDataset(FeatureReader(store.path), videos, ("rgb",), clip,
                           targets_for(videos, len(store.classes), False), None)
    predictions = list(predict_videos(model, dataset, aggregation="mean", multi_label=False))
    assert predictions[0].attention.shape == (2, 4, grid, grid)

    metrics = prediction_metrics(predictions, store.classes, multi_label=False)
    assert metrics["videos"] == 3 and 0 <= metrics["top1"] <= 1
    scores = localization_scores(predictions, done, clip)
    assert scores["videos"] == 3 and scores["frames"] == 18
    assert 0 < scores["uniform_mass"] < 1 and 0 <= scores["mass"] <= 1

    entry = done[0]
    maps = frame_attention(predictions[0].attention, clip, entry.n_frames)  # (6, K, K)
    uniform = np.full_like(maps, 1 / grid**2)
    paths = video_attention_figures(entry, {"uniform": uniform, "softattn": maps}, tmp_path / "figs", steps=4)
    assert paths["strip"].name == entry.id.replace("/", "__") + "_attention.png"
    with Image.open(paths["strip"]) as strip:
        assert strip.size == (MIN_WIDTH, TOP + 2 * (CAPTION + 64) + GAP + SCALE)
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == entry.n_frames
    assert len(decode_video(paths["mp4"], Sampling()).frames) == entry.n_frames
