"""The synthetic action dataset: real encoded videos in the UCF-101 layout, boxes, splits, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from glimpse.cli import main as glimpse_main
from glimpse.extract.synth import (
    CLASS_PATTERNS,
    SynthConfig,
    group_sizes,
    make_synthetic,
    n_test_groups,
    render_clip,
)

av.logging.set_level(av.logging.ERROR)

CONFIG = SynthConfig(classes=3, per_class=4, frames=8, size=64, seed=7)
TRAIN_LINE = re.compile(r"^(\w+)/v_\1_g(\d\d)_c(\d\d)\.(mp4|avi) (\d+)$")
TEST_LINE = re.compile(r"^(\w+)/v_\1_g(\d\d)_c(\d\d)\.(mp4|avi)$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", CONFIG)


def manifest(root: Path) -> dict:
    return json.loads((root / "synthetic.json").read_text())


def listed_videos(root: Path) -> list[Path]:
    lists = root / "ucfTrainTestlist"
    lines = (lists / "trainlist01.txt").read_text().splitlines() + (lists / "testlist01.txt").read_text().splitlines()
    return [root / "UCF-101" / line.split(" ")[0] for line in lines]


def decode_pyav(path: Path) -> tuple[np.ndarray, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), stream.codec_context.name  # (T, H, W, 3)


def decode_opencv(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"OpenCV cannot open {path}"
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def file_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_listed_videos_decode_with_pyav_and_opencv_to_all_frames(dataset: Path) -> None:
    codecs = {}
    videos = listed_videos(dataset)
    assert len(videos) == CONFIG.classes * CONFIG.per_class
    for path in videos:
        frames, codec = decode_pyav(path)
        assert frames.shape == (CONFIG.frames, CONFIG.size, CONFIG.size, 3), path
        assert decode_opencv(path) == CONFIG.frames, path
        codecs.setdefault(path.suffix, set()).add(codec)
    assert codecs == {".mp4": {"h264"}, ".avi": {"mpeg4"}}


def test_every_video_on_disk_is_listed_and_has_a_box_file(dataset: Path) -> None:
    on_disk = {p for p in (dataset / "UCF-101").rglob("*") if p.suffix in (".mp4", ".avi")}
    assert on_disk == set(listed_videos(dataset))
    for path in on_disk:
        boxes = json.loads(path.with_suffix(".boxes.json").read_text())
        assert (boxes["width"], boxes["height"], boxes["fps"]) == (CONFIG.size, CONFIG.size, CONFIG.fps)
        assert len(boxes["boxes"]) == CONFIG.frames


def test_boxes_hold_the_decoded_target(dataset: Path) -> None:
    decoys = [c["name"] for c in manifest(dataset)["classes"]]
    for video in manifest(dataset)["videos"]:
        decoded, _ = decode_pyav(dataset / video["path"])  # (T, H, W, 3)
        clean, _ = render_clip(video["class"], CONFIG.size, CONFIG.frames, video["seed"], with_target=False,
                               decoys=decoys)
        boxes = json.loads((dataset / video["boxes"]).read_text())["boxes"]
        diff = np.abs(decoded.astype(np.int16) - clean.astype(np.int16)).sum(axis=-1)  # (T, H, W)
        mass = np.where(diff > 120, diff, 0)  # the target, above compression noise at colour edges
        for t, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 < x0 < x1 < CONFIG.size and 0 < y0 < y1 < CONFIG.size, f"{video['path']} frame {t}: {boxes[t]}"
            total = mass[t].sum()
            assert total > 0, f"{video['path']} frame {t}: no target visible"
            inside = mass[t, y0:y1, x0:x1].sum()
            assert inside >= 0.9 * total, f"{video['path']} frame {t}: {inside / total:.2f} of the target in its box"


def test_boxes_move_the_way_the_class_says(dataset: Path) -> None:
    for video in manifest(dataset)["videos"]:
        pattern = CLASS_PATTERNS[video["class"]]
        boxes = np.array(json.loads((dataset / video["boxes"]).read_text())["boxes"], dtype=float)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (T, 2)
        assert pattern.motion == "straight", "the small config holds straight-moving classes only"
        travel = (centres[-1] - centres[0]) @ np.array(pattern.direction)
        assert travel > 0.3 * CONFIG.size, f"{video['path']}: moved {travel:.1f} px along {pattern.direction}"


@pytest.mark.parametrize("name", list(CLASS_PATTERNS))
def test_every_pattern_draws_its_target_inside_its_box_and_moves_as_named(name: str) -> None:
    pattern = CLASS_PATTERNS[name]
    assert re.fullmatch(r"([A-Z][a-z]+)+", name) and pattern.shape in name.lower()
    size, frames = 64, 16
    video, boxes = render_clip(name, size, frames, seed=[3, 1, 4])
    clean, clean_boxes = render_clip(name, size, frames, seed=[3, 1, 4], with_target=False)
    np.testing.assert_array_equal(boxes, clean_boxes)
    changed = np.any(video != clean, axis=-1)  # (T, H, W)
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        assert 0 < x0 < x1 < size and 0 < y0 < y1 < size, f"frame {t}: box {boxes[t]} touches the frame edge"
        assert changed[t].any() and changed[t, y0:y1, x0:x1].sum() == changed[t].sum(), f"frame {t}: target outside box"
        ys, xs = np.nonzero(changed[t])
        assert abs(xs.min() - x0) + abs(xs.max() + 1 - x1) + abs(ys.min() - y0) + abs(ys.max() + 1 - y1) <= 2
        assert 0.8 * size / 8 <= x1 - x0 <= 1.25 * size / 8 + 4, f"frame {t}: target {x1 - x0} px wide, not ~size/8"
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (T, 2)
    if pattern.motion == "circle":
        x, y = centres[:, 0], centres[:, 1]
        area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)  # > 0: clockwise on screen (y down)
        assert np.sign(area) == pattern.spin and abs(area) > 0.05 * size**2
        return
    direction = np.array(pattern.direction)
    along = (centres - centres[0]) @ direction  # (T,)
    across = (centres - centres[0]) @ np.array([-direction[1], direction[0]])  # (T,)
    assert along[-1] > 0.3 * size, f"moved {along[-1]:.1f} px along {pattern.direction}"
    if pattern.motion == "straight":
        assert np.abs(across).max() <= 1.5
    else:  # a zigzag swings to both sides of its mean line
        swing = across - np.polyval(np.polyfit(along, across, 1), along)
        assert swing.max() > 0.03 * size and swing.min() < -0.03 * size


def test_render_is_deterministic_by_seed() -> None:
    first, _ = render_clip("SquareRight", 64, 4, seed=[0, 0, 0])
    again, _ = render_clip("SquareRight", 64, 4, seed=[0, 0, 0])
    other, _ = render_clip("SquareRight", 64, 4, seed=[1, 0, 0])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_decoys_act_out_another_class_and_leave_the_target_alone() -> None:
    """With decoys = (SquareRight, DiscLeft), every distractor of a SquareRight clip is a disc moving left."""
    size, frames = 64, 12
    plain, boxes = render_clip("SquareRight", size, frames, seed=[2, 0, 1])
    video, decoy_boxes = render_clip("SquareRight", size, frames, seed=[2, 0, 1], decoys=["SquareRight", "DiscLeft"])
    np.testing.assert_array_equal(boxes, decoy_boxes)  # the target's path and box do not change
    assert not np.array_equal(plain, video)
    clean, _ = render_clip("SquareRight", size, frames, seed=[2, 0, 1], with_target=False,
                           decoys=["SquareRight", "DiscLeft"])
    moving = np.abs(np.diff(clean.astype(np.int16), axis=0)).sum(-1) > 30  # (T-1, H, W): only decoys move
    xs = [np.nonzero(m)[1].mean() for m in moving]
    assert xs[0] - xs[-1] > 0.25 * size, f"decoys' moving pixels went from x={xs[0]:.1f} to x={xs[-1]:.1f}"
    alone, _ = render_clip("SquareRight", size, frames, seed=[2, 0, 1], decoys=["SquareRight"])
    np.testing.assert_array_equal(alone, plain)  # no other class to act out: wandering distractors


def test_splits_follow_ucf101_and_keep_groups_apart(dataset: Path) -> None:
    lists = dataset / "ucfTrainTestlist"
    class_ind = [line.split(" ") for line in (lists / "classInd.txt").read_text().splitlines()]
    assert class_ind == [[str(i), name] for i, name in enumerate(list(CLASS_PATTERNS)[: CONFIG.classes], start=1)]
    labels = {name: int(i) for i, name in class_ind}
    train, test = set(), set()
    for line in (lists / "trainlist01.txt").read_text().splitlines():
        match = TRAIN_LINE.match(line)
        assert match, f"bad trainlist line {line!r}"
        assert int(match[5]) == labels[match[1]]
        train.add((match[1], match[2]))
    for line in (lists / "testlist01.txt").read_text().splitlines():
        match = TEST_LINE.match(line)
        assert match, f"bad testlist line {line!r}"
        test.add((match[1], match[2]))
    assert not train & test
    assert not {g for _, g in train} & {g for _, g in test}, "a group number is train in one class, test in another"
    assert {c for c, _ in train} == {c for c, _ in test} == set(labels)
    counts = manifest(dataset)["counts"]
    assert counts["train"] + counts["test"] == counts["videos"] == CONFIG.classes * CONFIG.per_class


@pytest.mark.parametrize("per_class", range(2, 31))
def test_group_sizes_cover_the_clips_and_leave_groups_for_both_splits(per_class: int) -> None:
    sizes = group_sizes(per_class)
    assert sum(sizes) == per_class and len(sizes) >= 2
    if per_class >= 4:
        assert all(2 <= s <= 4 for s in sizes)
    assert 1 <= n_test_groups(len(sizes)) <= len(sizes) - 1


def test_same_seed_same_bytes_other_seed_other_bytes_and_regeneration(dataset: Path, tmp_path: Path) -> None:
    expected = file_hashes(dataset)
    again = make_synthetic(tmp_path / "again", CONFIG)
    assert file_hashes(again) == expected
    make_synthetic(again, CONFIG)  # the same config again, into the same folder: regenerated, unchanged
    assert file_hashes(again) == expected
    other = file_hashes(make_synthetic(tmp_path / "other", SynthConfig(**{**asdict(CONFIG), "seed": CONFIG.seed + 1})))
    assert other.keys() == expected.keys()
    videos = [name for name in expected if name.endswith((".mp4", ".avi"))]
    assert all(other[name] != expected[name] for name in videos)
    with pytest.raises(FileExistsError, match="another config"):
        make_synthetic(again, SynthConfig(**{**asdict(CONFIG), "frames": CONFIG.frames + 1}))


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        make_synthetic(tmp_path, CONFIG)
    result = CliRunner().invoke(glimpse_main, ["synth", "--out", str(tmp_path), "--classes", "2"])
    assert result.exit_code == 1 and str(tmp_path) in result.output and "not a synthetic dataset" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("field, value", [("classes", 0), ("classes", 99), ("per_class", 1), ("frames", 1),
                                          ("size", 33), ("size", 16), ("fps", 0)])  # fmt: skip
def test_config_refuses_bad_values(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: value})


def test_cli_writes_the_dataset_it_is_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--classes", "2", "--per-class", "2", "--frames", "4", "--size", "32"]
    result = CliRunner().invoke(glimpse_main, [*args, "--seed", "5", "--fps", "10"])
    assert result.exit_code == 0, result.output
    written = manifest(out)
    assert written["config"] == asdict(SynthConfig(classes=2, per_class=2, frames=4, size=32, seed=5, fps=10))
    assert written["complete"] and [c["name"] for c in written["classes"]] == ["SquareRight", "DiscLeft"]
    assert len(listed_videos(out)) == 4
    frames, _ = decode_pyav(listed_videos(out)[0])
    assert frames.shape == (4, 32, 32, 3)
    bad = CliRunner().invoke(glimpse_main, [*args[:-2], "--size", "33"])
    assert bad.exit_code == 1 and "even" in bad.output
