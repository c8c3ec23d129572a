"""The pipelined extraction (decode threads feeding batches that span videos) against the sequential path:
the same stores, bad videos failing alone, RAFT batched across videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import moving_block
from extraction import extract
from test_extract import TINY_OPTS, assert_same_stores

from glimpse.media.encode import write_video
from glimpse.store import open_store
from glimpse.store.verify import verify_store
from glimpse.store.video_files import read_video_attrs


def ucf_tree(root: Path, videos: dict[str, np.ndarray | bytes]) -> Path:
    """A one-class UCF-101-style tree (the synthetic adapter's layout) holding ``videos``: name -> frames or bytes."""
    folder = root / "UCF-101" / "Mix"
    folder.mkdir(parents=True)
    for name, content in videos.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            write_video(folder / name, content)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Mix\n")
    (lists / "trainlist01.txt").write_text("".join(f"Mix/{name} 1\n" for name in videos))
    (lists / "testlist01.txt").write_text("")
    (root / "synthetic.json").write_text(json.dumps({"note": "hand-made pipeline fixture"}))
    return root


def assert_same_entries(a: Path, b: Path) -> None:
    """Both stores hold the same arrays (assert_same_stores) and the same attributes of every video
    (timestamps, flow pairs, source, checksums, errors), as stored."""
    assert_same_stores(a, b)
    for v in open_store(a).videos:
        assert read_video_attrs(a, v.key) == read_video_attrs(b, v.key), v.id


def both_paths(root: Path, tmp_path: Path, client, **opts) -> tuple[Path, Path]:
    """Extract ``root`` sequentially and pipelined (one worker process each time, same torch threads)."""
    stores = tmp_path / "sequential", tmp_path / "pipelined"
    for out, sequential in zip(stores, (True, False), strict=True):
        extract("synthetic", str(root), str(out), client=client, workers=2, sequential=sequential, **opts)
    return stores


def test_pipelined_store_equals_the_sequential_one(tiny_synthetic, dask_client, tmp_path):
    # batches of 8 frames over groups of 6 videos x 6 frames: most batches hold frames of two videos
    sequential, pipelined = both_paths(tiny_synthetic, tmp_path, dask_client, group=6, **TINY_OPTS)
    assert all(v.status == "done" for v in open_store(pipelined).videos)
    assert_same_entries(sequential, pipelined)
    assert verify_store(pipelined) == []


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Videos of 3, 30 and 90 frames and a corrupt file, at 32 x 40."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    # the first video (random-init batch norm is calibrated on its first 8 frames) is the long one
    return ucf_tree(root, {"v_Mix_g01_c01.mp4": moving_block(90, 32, 40), "v_Mix_g01_c02.avi": moving_block(30, 32, 40),
                           "v_Mix_g01_c03.mp4": moving_block(3, 32, 40),
                           "v_Mix_g01_c04.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8})


@pytest.mark.reliability
def test_a_mixed_batch_extracts_the_good_videos_and_fails_the_corrupt_one_alone(mixed, dask_client, tmp_path):
    # every frame, batches of 32 across all four videos in one task: the 3-frame video shares its batch;
    # Farneback flow runs in the decode threads, its images go through the flow-stream CNN's batches
    opts = {**TINY_OPTS, "size": 32, "frames": None, "batch_size": 32, "group": 4, "flow": "farneback"}
    sequential, pipelined = both_paths(mixed, tmp_path, dask_client, **opts)
    videos = {v.id: v for v in open_store(pipelined).videos}
    assert {vid: v.n_frames for vid, v in videos.items() if v.status == "done"} == {
        "Mix/v_Mix_g01_c01": 90, "Mix/v_Mix_g01_c02": 30, "Mix/v_Mix_g01_c03": 3}
    corrupt = videos["Mix/v_Mix_g01_c04"]
    assert corrupt.status == "failed" and "v_Mix_g01_c04.mp4: not a readable video" in corrupt.error
    assert_same_entries(sequential, pipelined)
    assert verify_store(pipelined) == []


def test_raft_batched_across_videos_in_the_pipeline_equals_the_sequential_path(dask_client, tmp_path):
    # two sizes of video: RAFT batches hold pairs of one flow size, from several videos
    root = ucf_tree(tmp_path / "data", {"v_Mix_g01_c01.mp4": moving_block(8, 24, 32),  # 8: calibration frames
                                        "v_Mix_g01_c02.mp4": moving_block(4, 24, 32),
                                        "v_Mix_g01_c03.mp4": moving_block(3, 32, 32)})
    opts = {**TINY_OPTS, "size": 32, "frames": 3, "flow": "raft", "batch_size": 4, "group": 3}
    sequential, pipelined = both_paths(root, tmp_path, dask_client, **opts)
    store = open_store(pipelined)
    assert all(v.status == "done" for v in store.videos)
    assert store.read("Mix/v_Mix_g01_c01", "flow").shape == (3, 2, 24, 32)
    assert np.abs(store.read("Mix/v_Mix_g01_c03", "flow_cnn")).max() > 0
    assert_same_entries(sequential, pipelined)


def test_batcher_fills_every_batch_across_videos_and_returns_each_frame_to_its_video():
    from contextlib import ExitStack

    import torch

    from glimpse.extract.batched import Batcher, Flight

    flights = [Flight({"id": f"v{n}", "path": f"v{n}.mp4"}, ExitStack()) for n in (3, 30, 90)]
    frames = {f"v{n}": torch.arange(n * 10, n * 10 + n, dtype=torch.float32) for n in (3, 30, 90)}
    got = {vid: torch.full_like(x, -1) for vid, x in frames.items()}
    sizes: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return x * 2

    def done(flight, start, out):
        got[flight.record["id"]][start : start + len(out)] = out

    batcher = Batcher(32, run, done, fail=lambda flight, exc: pytest.fail(str(exc)))
    for flight in flights:
        x = frames[flight.record["id"]]
        for start in range(0, len(x), 7):  # pieces of 7 frames, as decode threads might queue them
            batcher.add(flight, start, x[start : start + 7])
    batcher.flush()
    assert sizes == [32, 32, 32, 27]  # 123 frames: full batches spanning videos, one short batch at the end
    for vid, x in frames.items():
        torch.testing.assert_close(got[vid], x * 2)
