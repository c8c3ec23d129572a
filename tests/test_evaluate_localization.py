"""Attention localisation on hand-computed grids: box mass, pointing game, uniform baselines, aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.evaluate.localization import (
    box_cell_weights,
    frame_attention,
    frame_size,
    localization_scores,
    video_localization,
)
from glimpse.store.schema import DONE, VideoEntry
from glimpse.train.predict import VideoPrediction
from glimpse.train.sampling import Windows as Clip

NAN_BOX = [np.nan] * 4


def peaked(k: int, row: int, col: int) -> np.ndarray:
    """(K, K) map with all its mass on one cell."""
    a = np.zeros((k, k))
    a[row, col] = 1.0
    return a


def test_box_of_two_by_two_cells():
    box = [16, 16, 48, 48]  # grid [1, 3) x [1, 3) at K = 4 on 64 x 64
    on = video_localization(peaked(4, 1, 2)[None], [box], 64, 64)
    assert on == {"frames": 1, "mass": 1.0, "hit": 1.0, "uniform_mass": 0.25, "uniform_hit": 0.25}
    off = video_localization(peaked(4, 0, 3)[None], [box], 64, 64)
    assert off["mass"] == 0.0 and off["hit"] == 0.0 and off["uniform_mass"] == 0.25


def test_box_half_a_cell_wide_gets_half_weight():
    box = [16, 16, 24, 32]  # grid x [1, 1.5), y [1, 2): half of cell (1, 1)
    np.testing.assert_allclose(box_cell_weights(box, 4, 64, 64), 0.5 * peaked(4, 1, 1))
    scores = video_localization(peaked(4, 1, 1)[None], [box], 64, 64)
    assert scores["mass"] == pytest.approx(0.5)
    assert scores["hit"] == 0.0  # the centre x = 1.5 is on the exclusive right edge
    assert scores["uniform_mass"] == pytest.approx(0.5 / 16) and scores["uniform_hit"] == 0.0


def test_width_and_height_scale_separately():
    # 128 x 64 frame: x maps by 4/128, y by 4/64, so this box is again cells [1, 3) x [1, 3)
    scores = video_localization(peaked(4, 2, 1)[None], [[32, 16, 96, 48]], 128, 64)
    assert scores["mass"] == 1.0 and scores["uniform_mass"] == 0.25
    # the same map against a box only as wide as the first column
    assert video_localization(peaked(4, 2, 1)[None], [[0, 16, 32, 48]], 128, 64)["mass"] == 0.0


def test_spread_map_weights_partial_cells():
    a = np.zeros((4, 4))
    a[1, 1], a[1, 2], a[3, 3] = 0.5, 0.3, 0.2
    box = [24, 16, 48, 32]  # grid x [1.5, 3), y [1, 2): half of (1, 1), all of (1, 2)
    scores = video_localization(a[None], [box], 64, 64)
    assert scores["mass"] == pytest.approx(0.5 * 0.5 + 0.3)
    assert scores["hit"] == 1.0  # the arg-max (1, 1) has its centre (1.5, 1.5) on the inclusive left edge


def test_uniform_map_scores_exactly_the_uniform_baseline():
    boxes = [[16, 16, 48, 48], [0, 0, 64, 16], [5, 7, 33, 60]]
    uniform = np.full((3, 4, 4), 1 / 16)
    scores = video_localization(uniform, boxes, 64, 64)
    assert scores["mass"] == pytest.approx(scores["uniform_mass"])
    assert scores["hit"] == pytest.approx(scores["uniform_hit"])  # ties share the hit
    assert scores["uniform_hit"] == pytest.approx((4 / 16 + 4 / 16 + 8 / 16) / 3)  # last: 2 columns x 4 rows


def test_frames_without_box_are_skipped():
    maps = np.stack([peaked(4, 0, 0), peaked(4, 1, 1), peaked(4, 3, 3)])
    scores = video_localization(maps, [NAN_BOX, [16, 16, 32, 32], NAN_BOX], 64, 64)
    assert scores["frames"] == 1 and scores["mass"] == 1.0
    assert video_localization(maps, [NAN_BOX] * 3, 64, 64) is None


@pytest.mark.parametrize("maps, boxes, message", [
    (np.full((1, 4, 4), 0.1), [[0, 0, 8, 8]], "must sum to 1"),
    (np.stack([peaked(4, 0, 0) * 2 - 1 / 16]), [[0, 0, 8, 8]], "non-negative"),
    (np.full((2, 4, 4), 1 / 16), [[0, 0, 8, 8]], r"boxes must be \(2, 4\)"),
    (np.full((1, 4, 3), 1 / 12), [[0, 0, 8, 8]], r"\(T, K, K\)"),
])  # fmt: skip
def test_bad_maps_are_refused(maps, boxes, message):
    with pytest.raises(ValueError, match=message):
        video_localization(maps, boxes, 64, 64)


def test_frame_attention_averages_the_steps_that_saw_a_frame():
    clip = Clip(frames=3)
    assert clip.cover(5).tolist() == [[0, 1, 2], [2, 3, 4]]  # frame 2 is seen twice
    maps = np.stack([np.stack([peaked(2, 0, 0), peaked(2, 0, 1), peaked(2, 1, 0)]),
                     np.stack([peaked(2, 1, 1), peaked(2, 1, 1), peaked(2, 0, 0)])])  # (clips, T, K, K)
    per_frame = frame_attention(maps, clip, 5)
    assert per_frame.shape == (5, 2, 2)
    np.testing.assert_allclose(per_frame[2], [[0, 0], [0.5, 0.5]])
    np.testing.assert_allclose(per_frame[[0, 1, 3, 4]], np.stack([peaked(2, 0, 0), peaked(2, 0, 1),
                                                                  peaked(2, 1, 1), peaked(2, 0, 0)]))
    with pytest.raises(ValueError, match="does not match the clips"):
        frame_attention(maps[:1], clip, 5)


def test_frame_size_turns_with_rotation():
    entry = VideoEntry("v", "k", "v.mp4", (0,), {}, source={"width": 128, "height": 64, "rotation": 90})
    assert frame_size(entry) == (64, 128)
    with pytest.raises(ValueError, match="'v': the store records no source width"):
        frame_size(VideoEntry("v", "k", "v.mp4", (0,), {}))


def entry(vid: str, boxes, n: int) -> VideoEntry:
    return VideoEntry(vid, vid, f"{vid}.mp4", (0,), {"1": "test"}, status=DONE, n_frames=n,
                      frame_indices=tuple(range(n)), boxes=boxes, source={"width": 64, "height": 64})


def prediction(vid: str, attention: np.ndarray | None) -> VideoPrediction:
    return VideoPrediction(vid, (0,), np.array([1.0]), 0, np.zeros((1, 1, 1)), attention, 0.0)


def test_localization_scores_over_videos():
    clip = Clip(frames=2)  # 4 frames -> clips [0, 1], [2, 3]
    box = (16.0, 16.0, 48.0, 48.0)
    good = np.stack([peaked(4, 1, 1), peaked(4, 2, 2)])  # both inside
    half = np.stack([peaked(4, 1, 1), peaked(4, 0, 0)])  # one in, one out
    preds = [prediction("a", np.stack([good, good])), prediction("b", np.stack([half, half])),
             prediction("c", np.stack([good, good]))]
    entries = [entry("a", (box,) * 4, 4), entry("b", (box, box, (np.nan,) * 4, box), 4), entry("c", None, 4)]
    scores = localization_scores(preds, entries, clip)
    assert scores["videos"] == 2 and scores["frames"] == 7 and scores["videos_without_boxes"] == 1
    assert scores["mass"] == pytest.approx((1.0 + 1 / 3) / 2)  # b's boxed frames 0, 1, 3: in, out, out
    assert scores["hit_rate"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert scores["uniform_mass"] == pytest.approx(0.25) and scores["uniform_hit_rate"] == pytest.approx(0.25)
    assert [v["id"] for v in scores["per_video"]] == ["a", "b"]
    assert localization_scores(preds, {e.id: e for e in entries}, clip) == scores


def test_localization_scores_needs_attention_and_known_videos():
    e = [entry("a", ((0.0, 0.0, 8.0, 8.0),) * 2, 2)]
    with pytest.raises(ValueError, match="'a': the model gives no attention maps"):
        localization_scores([prediction("a", None)], e, Clip(2))
    with pytest.raises(ValueError, match="'z': not among the store's videos"):
        localization_scores([prediction("z", np.full((1, 2, 4, 4), 1 / 16))], e, Clip(2))
    empty = localization_scores([], e, Clip(2))
    assert empty["videos"] == 0 and empty["mass"] is None
