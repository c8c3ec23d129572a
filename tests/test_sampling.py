"""Clip policies, video-major epochs, the store's direct read path and --cache-dir, on stores written here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from store_files import edit_entry

from glimpse.store import VideoRecord, create_store, open_store
from glimpse.store.layout import video_key
from glimpse.store.video_files import open_video, write_video_file
from glimpse.train.cache import DiskCache
from glimpse.train.clips import Video, role_videos
from glimpse.train.config import TrainConfig, resolve
from glimpse.train.data import ClipDataset, FeatureReader, targets_for
from glimpse.train.loader import EpochLoader, in_background
from glimpse.train.loop import train_model
from glimpse.train.predict import predict_run
from glimpse.train.run import TIMING_COLUMNS, RunDir
from glimpse.train.sampling import POLICIES, Policy, RandomWindows, Segments, Spread, Windows, epoch_plan

LENGTHS = (5, 9, 12, 17)  # frames of the videos of each class, in order
FAST = {"batch_size": 3, "workers": 0, "progress": False, "lr": 1e-3, "val_fraction": 0}


def lengths_store(path: Path, frame_shape=(4, 2, 2)) -> Path:
    """Two classes, each with one video of every length in LENGTHS (the first two of a class are test).

    Frame t of a video holds the value t + 100 * video number everywhere (exact in float16), so a batch says which
    frames it was cut from.
    """
    records = [VideoRecord(id=f"{c}/v{i}", path=f"/v/{c}{i}.avi", labels=(k,),
                           splits={"1": "test" if i < 2 else "train"}, group=f"{c}/g{i}")
               for k, c in enumerate("ab") for i in range(len(LENGTHS))]
    writer = create_store(path, dataset="lengths", classes=("a", "b"), records=records, config={"lengths": 1},
                          streams={"rgb": {"frame_shape": list(frame_shape)}})
    for n, r in enumerate(records):
        frames = LENGTHS[n % len(LENGTHS)]
        cube = np.broadcast_to((np.arange(frames) + 100 * n)[:, None, None, None],
                               (frames, *frame_shape)).astype(np.float32)  # (T, C, K, K)
        writer.write_video(video_key(r.id), {"rgb": cube}, {"n_frames": frames, "frame_indices": list(range(frames))})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return lengths_store(tmp_path_factory.mktemp("lengths") / "store")


def test_each_policy_cuts_the_clips_its_paper_describes():
    windows = Windows(4, stride=3)
    assert windows.dense(11).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]  # starts s apart, all fit
    assert windows.cover(11).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [7, 8, 9, 10]]  # blocks, the last at the end
    assert Windows(4).dense(3).tolist() == [[0, 1, 2, 2]]  # a short video: one clip, padded
    segments = Segments(3, stride=2)  # Quan: T consecutive frames, starts d apart, train and test alike
    assert segments.cover(8).tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    assert (segments.train(8, np.random.default_rng(0)) == segments.cover(8)).all()
    assert all((np.diff(c) == 1).all() for c in segments.cover(40))  # never every 2nd frame inside a segment
    rng = np.random.default_rng(0)
    random = RandomWindows(3, clips_per_video=5).train(10, rng)  # (5, 3)
    assert random.shape == (5, 3) and (np.diff(random, axis=1) == 1).all() and random.max() <= 9
    spread = Spread(4)
    assert spread.cover(20).tolist() == [[2, 7, 12, 17]]  # equally spaced over the whole video
    assert (np.diff(spread.train(20, rng)[0]) == 5).all()
    capped = Windows(2, clips_per_video=2).train(10, rng)  # a random subset of the dense windows
    assert capped.shape == (2, 2) and (np.diff(capped, axis=1) == 1).all()
    for policy in (windows, segments, RandomWindows(3, clips_per_video=2), spread):
        assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert set(POLICIES) == {"windows", "all_windows", "segments", "random", "spread"}
    every = POLICIES["all_windows"](4, stride=3)  # Sharma's released code: trained as windows, tested at stride 1
    assert every.dense(11).tolist() == windows.dense(11).tolist()
    assert every.cover(11).tolist() == [list(range(s, s + 4)) for s in range(8)]
    assert every.cover(2).tolist() == [[0, 1, 1, 1]]  # shorter than a clip: one padded window


def test_an_epoch_plan_is_video_major_seeded_and_resumable():
    lengths = [7, 30, 12, 9, 41, 5, 18]
    policy = Windows(5)
    plan = epoch_plan(lengths, policy, seed=1, epoch=2, videos=3)
    seen = [i for g in plan for i, _, _ in g.ranges]
    assert sorted(seen) == list(range(len(lengths)))  # each video read once: one range per video per epoch
    items = np.concatenate([g.items for g in plan])
    assert len(items) == sum(policy.count(n) for n in lengths)
    for g in plan:  # every clip of a group lies inside the range read for its video
        lo = {i: (a, b) for i, a, b in g.ranges}
        assert all(lo[int(v)][0] <= c.min() and c.max() < lo[int(v)][1] for v, c in zip(g.items, g.clips, strict=True))
        if len(g.ranges) > 1:  # the clips of a group's videos are shuffled together, not one video after another
            assert (np.diff(g.items) != 0).sum() > len(g.ranges) - 1
    again = epoch_plan(lengths, policy, seed=1, epoch=2, videos=3)
    assert all((a.clips == b.clips).all() and (a.items == b.items).all() for a, b in zip(plan, again, strict=True))
    other = epoch_plan(lengths, policy, seed=1, epoch=3, videos=3)
    assert not np.array_equal(np.concatenate([g.items for g in other]), items)


def test_the_loader_cuts_each_clip_from_the_frames_it_names_and_resumes_mid_epoch(store):
    s = open_store(store)
    videos = role_videos(s, "1", "train")
    reader = FeatureReader(str(store)).open(videos, ["rgb"])
    dataset = ClipDataset(reader, videos, ["rgb"], Windows(4), targets_for(videos, 2, False), None)
    loader = EpochLoader(dataset, Windows(4), seed=0, batch_size=3, workers=0, videos=2)
    loader.set_epoch(1)
    batches = list(loader)
    assert len(batches) == loader.batches == -(-loader.items // 3)
    assert loader.items == sum(Windows(4).count(v.n_frames) for v in videos)
    clips = torch.cat([b.cubes()[0].clone() for b in batches])  # (items, T, C, K, K)
    steps = clips[:, :, 0, 0, 0].double()  # (items, T): frame + 100 * video number
    assert (torch.diff(steps, dim=1) == 1).all()  # T consecutive frames of one video
    numbers = {v.id: 100 * [r.id for r in s.manifest].index(v.id) for v in videos}
    labels = torch.cat([b.target for b in batches])
    by_number = {n: v for v, n in numbers.items()}
    for row, label in zip(steps, labels, strict=True):
        video = next(v for v in videos if v.id == by_number[int(row[0]) // 100 * 100])
        assert label == video.label and row[-1] - numbers[video.id] < video.n_frames
    loader.set_epoch(1, skip=4)  # a run resumed after 4 clips of this epoch sees the same rest
    assert torch.equal(torch.cat([b.cubes()[0].clone() for b in loader]), clips[4:])


def long_store(path: Path, videos: int = 8, frames: int = 64, classes: int = 4) -> Path:
    """``videos`` videos of ``frames`` frames in ``classes`` classes, all training, random cubes of (32, 4, 4)."""
    names = tuple("abcdefgh"[:classes])
    records = [VideoRecord(id=f"{names[i % classes]}/v{i}", path=f"/v/{i}.avi", labels=(i % classes,),
                           splits={"1": "train"}, group=f"g{i}") for i in range(videos)]
    writer = create_store(path, dataset="long", classes=names, records=records, config={"long": 1},
                          streams={"rgb": {"frame_shape": [32, 4, 4]}})
    rng = np.random.default_rng(0)
    for r in records:
        writer.write_video(video_key(r.id), {"rgb": rng.standard_normal((frames, 32, 4, 4)).astype(np.float32)},
                           {"n_frames": frames, "frame_indices": list(range(frames))})
    return path


def test_batches_gather_the_windows_a_plain_cutter_cuts_from_one_copy_of_each_frame(tmp_path):
    s = open_store(long_store(tmp_path / "long"))
    videos = role_videos(s, "1", "train")
    policy, B = Windows(16), 10
    dataset = ClipDataset(FeatureReader(s.path).open(videos, ["rgb"]), videos, ["rgb"], policy,
                          targets_for(videos, 4, False), None)
    loader = EpochLoader(dataset, policy, seed=3, batch_size=B, workers=0)
    # the plain window cutter: the plan's clips in order, each window cut from the video's whole array
    arrays = [s.read(v.id, "rgb") for v in videos]
    plan = epoch_plan([v.n_frames for v in videos], policy, 3, 1, frames=loader.frames)
    order = [(int(v), c) for g in plan for v, c in zip(g.items, g.clips, strict=True)]
    windows = np.stack([arrays[v][c] for v, c in order])  # (clips, T, C, K, K)
    loader.set_epoch(1)
    held, copied, cut, got = set(), 0, 0, []
    for batch in loader:
        cubes = batch.cubes()[0]  # (B, T, C, K, K)
        got.append(cubes.clone())
        cut += cubes.nbytes  # what a window cutter copies on the host
        for frames, rows in batch.parts:  # what the loader copies: each group's frames once
            copied += rows.nbytes + sum(f.nbytes for f in frames if id(f) not in held)
            held.update(id(f) for f in frames)
        assert torch.equal(batch.target, torch.tensor([videos[v].label for v in batch.videos]))
    assert np.array_equal(torch.cat(got).numpy(), windows)
    assert len(got) == loader.batches and all(len(b) == B for b in got[:-1])
    assert copied <= cut / 10, (copied, cut)
    # 8 videos of 64 frames fit the shuffle buffer: every batch draws from (nearly) every video
    assert loader.mix(1)[0] >= min(B, len(videos)) / 2
    capped = EpochLoader(dataset, policy, seed=3, batch_size=B, workers=0, videos=2)
    assert capped.mix(1)[0] <= 2 and capped.mix(1)[1] <= 2
    # a buffer of 130 frames: groups of two videos (128 frames), each read once, batches spanning two groups
    small = EpochLoader(dataset, policy, seed=3, batch_size=B, workers=0, buffer_bytes=130 * dataset.frame_bytes())
    groups = small.plan(1)
    assert [len(g.ranges) for g in groups] == [2] * 4 and all(g.frames <= 130 for g in groups)
    small.set_epoch(1)
    spanning = [b for b in small if len(b.parts) == 2]
    assert spanning and all(len(b.videos) == B for b in spanning)
    small.set_epoch(1)
    rows = [r for b in small for r in b.cubes()[0].clone()]
    assert np.array_equal(torch.stack(rows).numpy(), np.stack([arrays[v][c] for g in groups
                                                               for v, c in zip(g.items, g.clips, strict=True)]))


def test_a_training_set_that_is_one_group_is_read_once_for_every_epoch(tmp_path):
    s = open_store(long_store(tmp_path / "long", videos=4, frames=20))
    videos = role_videos(s, "1", "train")
    dataset = ClipDataset(FeatureReader(s.path).open(videos, ["rgb"]), videos, ["rgb"], Windows(5),
                          targets_for(videos, 4, False), None)
    loader = EpochLoader(dataset, Windows(5), seed=0, batch_size=4, workers=0)
    frames = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        frames.append({id(f) for b in loader for f, _ in b.parts})
        assert loader.reading == ([] if epoch else [loader.plan(0)[0].ranges])
    assert frames[0] == frames[1] == frames[2] and len(frames[0]) == 1


def test_store_batches_equal_ram_batches_read_ahead_in_process_and_in_a_spawned_worker(store):
    s = open_store(store)
    videos = role_videos(s, "1", "train")
    ram = {(v.key, "rgb"): s.read(v.id, "rgb") for v in videos}
    targets = targets_for(videos, 2, False)

    def batches(reader, workers, ahead=0):
        policy = RandomWindows(4)
        loader = EpochLoader(ClipDataset(reader, videos, ["rgb"], policy, targets, None), policy, seed=0,
                             batch_size=3, workers=workers, videos=2, ahead=ahead)
        loader.set_epoch(2)
        next(iter(loader))  # an epoch left after one batch stops its read-ahead and starts cleanly again
        return [(b.cubes()[0].clone(), b.target) for b in loader]

    expected = batches(FeatureReader(str(store), ram), 0)
    # groups read ahead by a thread here or decoded into shared memory by a spawned worker; batches cut between
    # steps (CPU training) or in a thread one batch ahead (GPU training)
    for workers, ahead in ((0, 0), (0, 1), (1, 1)):
        got = batches(FeatureReader(str(store)).open(videos, ["rgb"]), workers, ahead)
        assert len(got) == len(expected)
        for (cubes, labels), (want, want_labels) in zip(got, expected, strict=True):
            assert torch.equal(cubes, want) and torch.equal(labels, want_labels)


def test_batches_cut_in_the_background_arrive_in_order_with_the_error_and_stop_when_left():
    import threading

    log = []

    def source(fail_at=None):
        try:
            for i in range(10):
                if i == fail_at:
                    raise OSError(f"chunk {i}: unreadable")
                log.append(("made", i, threading.current_thread().name))
                yield i
        finally:
            log.append(("closed",))

    assert list(in_background(source(), 2)) == list(range(10))
    assert {entry[2] for entry in log if entry[0] == "made"} == {"glimpse-batches"} and log[-1] == ("closed",)
    got = []
    with pytest.raises(OSError, match="chunk 3: unreadable"):  # the items before the error, then the error itself
        for item in in_background(source(fail_at=3), 2):
            got.append(item)
    assert got == [0, 1, 2]
    log.clear()
    for item in in_background(source(), 1):
        if item == 2:
            break  # the consumer leaves: the thread stops at once (at most depth + 2 made) and closes the source
    made = [entry[1] for entry in log if entry[0] == "made"]
    assert made == list(range(len(made))) and len(made) <= 5 and log[-1] == ("closed",)
    assert not any(t.name == "glimpse-batches" for t in threading.enumerate())


@pytest.mark.slow
def test_regattn_votes_over_every_segment_of_every_test_video(store, tmp_path):
    result = train_model(store, "regattn", tmp_path / "run", epochs=1, frames=4, stride=3,
                         model_args={"hidden": 8, "blocks": 1}, **FAST)
    assert 0 <= result.test_accuracy <= 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["sampling"] == {"name": "segments", "frames": 4, "stride": 3, "clips_per_video": 0}
    # 4 training videos of 2 classes in one shuffle buffer: batches of 3 clips from more than 2 videos, on median
    mix = re.search(r"epoch 1 batches: median ([0-9.]+) distinct videos and ([0-9.]+) classes per batch",
                    (tmp_path / "run" / "events.log").read_text())
    assert mix and float(mix[1]) > 2 and float(mix[2]) == 2
    # training: floor((n - T) / d) + 1 segments of every training video per epoch
    assert config["data"]["clips_per_epoch"] == 2 * sum((n - 4) // 3 + 1 for n in LENGTHS[2:])
    predictions = {p.id: p for p in predict_run(tmp_path / "run")}
    for video in role_videos(open_store(store), "1", "test"):
        assert predictions[video.id].clip_logits.shape[0] == (video.n_frames - 4) // 3 + 1  # every segment votes


def test_steps_set_the_epochs_of_an_iteration_budget():
    config, notes = resolve(TrainConfig(store="s", model="cham", out="o", steps=10, batch_size=4,
                                        clips_per_video=2), [60, 70, 80])
    assert config.sampling == "random" and config.policy() == RandomWindows(60, 1, 2)
    assert config.epochs == 5 and "--steps 10" in notes[0]  # 6 clips per epoch, 2 batches of 4


@pytest.mark.parametrize("codec", ["zstd", "blosc", "none"])
def test_the_direct_read_path_returns_what_zarr_returns(codec, tmp_path):
    from zarr.codecs import BloscCodec, ZstdCodec

    compressors = {"zstd": ZstdCodec(level=3), "blosc": BloscCodec(cname="lz4", shuffle="shuffle"), "none": None}
    path = lengths_store(tmp_path / "store")
    s = open_store(path)
    video = s.videos[3]
    data = np.random.default_rng(0).standard_normal((video.n_frames, 4, 2, 2)).astype(np.float16)
    write_video_file(path, video.key, {"video": video.result.to_dict()},
                     {"rgb": (data, compressors[codec], ("frame", "channel", "y", "x"), 5)})
    stream = s.stream(video.id, "rgb")
    assert stream.direct
    for lo, hi in [(0, 17), (3, 4), (4, 11), (15, 17), (10, 99), (5, 5)]:
        np.testing.assert_array_equal(stream.read(lo, hi), data[lo:hi])
    edit_entry(path, video.key, "rgb/c/1/0/0/0", lambda _: None)  # a chunk never written reads as the fill value
    stream = s.stream(video.id, "rgb")
    np.testing.assert_array_equal(stream.read(4, 11), open_video(path, video.key)["rgb"][4:11])


def test_a_changed_store_gets_a_new_cache_file(tmp_path):
    path = lengths_store(tmp_path / "store")
    s = open_store(path)
    videos = role_videos(s, "1", "train")
    first = DiskCache.build(s, videos, ["rgb"], tmp_path / "cache")
    np.testing.assert_array_equal(first.frames(videos[0].key, "rgb"), s.read(videos[0].id, "rgb"))
    assert DiskCache.build(s, videos, ["rgb"], tmp_path / "cache").path == first.path  # found, not rewritten
    changed = np.full((videos[0].n_frames, 4, 2, 2), 7.0, np.float32)
    create_store(path, dataset="lengths", classes=("a", "b"), records=[], config={"lengths": 1}, streams={})
    from glimpse.store import StoreWriter

    StoreWriter(path).write_video(videos[0].key, {"rgb": changed}, {"n_frames": videos[0].n_frames})
    s = open_store(path)
    second = DiskCache.build(s, videos, ["rgb"], tmp_path / "cache")
    assert second.path != first.path
    np.testing.assert_array_equal(second.frames(videos[0].key, "rgb"), changed.astype(np.float16))


def run_cli(store: Path, out: Path, cache: Path | None) -> subprocess.Popen:
    args = [sys.executable, "-m", "glimpse.train", "--store", str(store), "--model", "avgpool_lstm", "--out",
            str(out), "--epochs", "2", "--batch-size", "3", "--workers", "0", "--quiet", "--val-fraction", "0",
            "--set", "hidden=8", "--frames", "4", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(args + (["--cache-dir", str(cache)] if cache else []), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_runs_sharing_a_cache_dir_at_once_end_like_one_alone_without_it(store, tmp_path):
    alone = run_cli(store, tmp_path / "alone", None)
    assert alone.wait(300) == 0, alone.stdout.read()
    both = [run_cli(store, tmp_path / f"run{i}", tmp_path / "cache") for i in range(2)]
    for p in both:
        assert p.wait(300) == 0, p.stdout.read()
    assert len(list((tmp_path / "cache").glob("*.f16"))) == 1 and not list((tmp_path / "cache").glob(".*"))
    expected = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in RunDir(tmp_path / "alone").metrics()]
    for i in range(2):
        rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in RunDir(tmp_path / f"run{i}").metrics()]
        assert rows == expected
        assert json.loads((tmp_path / f"run{i}" / "result.json").read_text())["test"] == \
            json.loads((tmp_path / "alone" / "result.json").read_text())["test"]


def test_video_from_entry_is_the_one_training_and_prediction_use(store):
    s = open_store(store)
    test = role_videos(s, "1", "test")
    assert [v.id for v in test] == ["a/v0", "a/v1", "b/v0", "b/v1"] and all(isinstance(v, Video) for v in test)
    assert [v.n_frames for v in test] == [5, 9, 5, 9]
