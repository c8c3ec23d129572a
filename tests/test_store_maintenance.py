"""Lab roots (content-addressed stores), store gc and store repair, on stores made by the real extraction."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from extraction import extract
from store_files import chunk_entries, edit_entry
from test_extract import REPO, TINY_OPTS

from glimpse.store import StoreError, StoreExistsError, open_store
from glimpse.store.catalog import resolve_store
from glimpse.store.claims import claim_video
from glimpse.store.index import IndexLog
from glimpse.store.layout import video_key
from glimpse.store.maintenance import collect_garbage, extraction_options, recode_store
from glimpse.store.verify import verify_store
from glimpse.store.video_files import video_path


@pytest.fixture(scope="module")
def lab(tiny_synthetic, dask_client, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    first = extract("synthetic", str(tiny_synthetic), lab=str(root), client=dask_client, **TINY_OPTS)
    return root, first


def test_the_same_features_asked_twice_land_in_the_same_store(lab, tiny_synthetic, dask_client):
    root, first = lab
    assert first.done == 12
    again = extract("synthetic", str(tiny_synthetic), lab=str(root), client=dask_client, **TINY_OPTS)
    assert again.store == first.store and again.skipped == 12 and again.done == 0
    store = open_store(first.store)
    assert first.store == str(root / "synthetic" / f"googlenet-{store.config_hash}")
    assert resolve_store(root, "synthetic").path == first.store
    other = extract("synthetic", str(tiny_synthetic), lab=str(root), client=dask_client,
                            **{**TINY_OPTS, "frames": 4})
    assert other.store != first.store
    with pytest.raises(StoreError, match="2 stores of dataset 'synthetic'.*--store"):
        resolve_store(root, "synthetic")
    with pytest.raises(StoreError, match="no store of dataset 'ucf11'.*make extract DATASET=ucf11"):
        resolve_store(root, "ucf11")
    shutil.rmtree(other.store)


def test_gc_removes_what_a_crashed_writer_left_and_spares_live_writers(lab, tmp_path):
    store_path = tmp_path / "s"
    shutil.copytree(lab[1].store, store_path)
    videos = open_store(store_path).videos
    crashed, live = videos[0], videos[1]
    log = IndexLog(store_path)  # what the two writers logged before they touched their videos
    log.append(video_key(crashed.id), "writing")
    log.append(video_key(live.id), "writing")
    log.close()
    temporary = {}
    for video in (crashed, live):  # as writers killed (or still going) half-way through a video's file
        whole = Path(video_path(store_path, video.key))
        temporary[video.id] = whole.with_name(f".{whole.name}.tmp4242")
        temporary[video.id].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    Path(video_path(store_path, crashed.key)).unlink()  # a video being written again after a repair
    (store_path / "zarr.json.abc.partial").write_bytes(b"half")
    assert {v.id: v.status for v in open_store(store_path).videos}[crashed.id] == "pending"  # no half video read
    with claim_video(store_path, video_key(live.id)):  # a live run is writing this one
        cleanup = collect_garbage(store_path)
    assert cleanup.groups == [crashed.id] and cleanup.partial_files == 1 and cleanup.busy == [live.id]
    after = {v.id: v.status for v in open_store(store_path).videos}
    assert after[crashed.id] == "pending" and after[live.id] == "done"
    assert not temporary[crashed.id].exists() and temporary[live.id].exists()
    assert collect_garbage(store_path).groups == [live.id]  # its writer gone, its file is garbage too


@pytest.mark.slow
def test_repair_redoes_a_corrupted_video_through_the_extraction_stage(lab, tmp_path):
    store_path = tmp_path / "s"
    shutil.copytree(lab[1].store, store_path)
    victim = open_store(store_path).videos[4]
    original = open_store(store_path).read(victim.id, "rgb")
    edit_entry(store_path, victim.key, "rgb/c/0/0/0/0", lambda chunk: flip_middle_byte(chunk))
    assert [vid for vid, _ in verify_store(store_path)] == [victim.id]
    dry = subprocess.run([sys.executable, "-m", "glimpse.store", "repair", str(store_path), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "1 bad and 0 failed" in dry.stdout and "backbone=googlenet" in dry.stdout
    assert [vid for vid, _ in verify_store(store_path)] == [victim.id]  # a dry run changes nothing
    result = subprocess.run([sys.executable, "-m", "glimpse.store", "repair", str(store_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_store(store_path) == []
    np.testing.assert_array_equal(open_store(store_path).read(victim.id, "rgb"), original)


def test_repair_asks_the_extraction_api_for_nothing_it_does_not_take(lab):
    """Every option repair derives from a store is a parameter of the extraction stage's API (that they reproduce
    the store's config is shown by the repair above, which would be refused by a store of another config)."""
    from glimpse.extract.api import FeatureRequest, RunOptions

    features, run = extraction_options(lab[1].store)
    assert FeatureRequest(**features).dataset == "synthetic" and RunOptions(**run).out == lab[1].store


def flip_middle_byte(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    return bytes(flipped)


chunk_files = chunk_entries


@pytest.fixture(scope="module")
def raw_store(lab, tiny_synthetic, dask_client, tmp_path_factory):
    """The lab's features extracted again with --codec none."""
    out = tmp_path_factory.mktemp("raw") / "store"
    summary = extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, codec="none",
                              **TINY_OPTS)
    assert summary.done == 12
    return out


def test_a_codec_is_a_storage_choice_the_values_and_config_hash_stay(lab, raw_store):
    zstd, raw = open_store(lab[1].store), open_store(raw_store)
    assert (zstd.metadata.codec, raw.metadata.codec) == ("zstd", "none")
    assert raw.config_hash == zstd.config_hash and raw.config == zstd.config
    frame_bytes = 2 * int(np.prod(raw.streams["rgb"]["frame_shape"]))
    for video in raw.videos:
        np.testing.assert_array_equal(raw.read(video.id, "rgb"), zstd.read(video.id, "rgb"))
        assert video.checksums == zstd.video(video.id).checksums
        stream = raw.stream(video.id, "rgb")
        assert stream.direct
        np.testing.assert_array_equal(stream.read(1, 5), zstd.read(video.id, "rgb")[1:5])  # cut chunks, no decoding
    sizes = {len(data) for data in chunk_files(raw_store).values()}
    assert sizes == {frame_bytes * raw.stream(raw.videos[0].id, "rgb").array.chunks[0]}  # raw float16, 2 B/value
    assert sum(map(len, chunk_files(raw_store).values())) > 1.3 * sum(map(len, chunk_files(lab[1].store).values()))
    assert verify_store(raw_store) == []
    info = subprocess.run([sys.executable, "-m", "glimpse.store", "info", str(raw_store)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "chunks stored with none" in info.stdout


def test_a_store_keeps_its_codec_and_refuses_another(lab, raw_store, tiny_synthetic, dask_client):
    before = chunk_files(raw_store)
    again = extract("synthetic", str(tiny_synthetic), str(raw_store), client=dask_client, **TINY_OPTS)
    assert again.skipped == 12 and open_store(raw_store).metadata.codec == "none"  # no --codec: the store's own
    with pytest.raises(StoreExistsError, match="stored with codec zstd, this run asks for none.*leave --codec out"):
        extract("synthetic", str(tiny_synthetic), lab=str(lab[0]), client=dask_client, codec="none",
                        **TINY_OPTS)
    assert open_store(lab[1].store).metadata.codec == "zstd" and verify_store(lab[1].store) == []
    assert chunk_files(raw_store) == before


def test_recode_copies_a_store_to_another_codec_file_for_file(lab, raw_store, tmp_path):
    """zstd -> none gives the chunk files --codec none extraction wrote; none -> zstd gives the original's back."""
    copy = tmp_path / "copy"
    run = subprocess.run([sys.executable, "-m", "glimpse.store", "recode", lab[1].store, str(copy), "--codec", "none"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "12 videos copied with codec none" in run.stdout
    assert chunk_files(copy) == chunk_files(raw_store)
    copied, source = open_store(copy), open_store(lab[1].store)
    assert copied.metadata == replace(source.metadata, codec="none")
    assert [v.to_dict() for v in copied.videos] == [v.to_dict() for v in source.videos]
    back = recode_store(copy, tmp_path / "back", "zstd")
    assert back == {"done": 12, "failed": 0, "pending": 0}
    assert chunk_files(tmp_path / "back") == chunk_files(lab[1].store)
    # an interrupted copy is finished; a folder that is no store is refused and left as it was
    Path(video_path(copy, copied.videos[3].key)).unlink()
    assert recode_store(lab[1].store, copy, "none") == {"done": 12, "failed": 0, "pending": 0}
    assert chunk_files(copy) == chunk_files(raw_store)
    with pytest.raises(StoreExistsError, match="codec none, this run asks for lz4"):
        recode_store(lab[1].store, copy, "lz4")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(StoreExistsError, match="not a glimpse store; refusing"):
        recode_store(lab[1].store, tmp_path / "notes", "none")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    with pytest.raises(StoreExistsError, match="mine.txt: is a file, not a store"):
        recode_store(lab[1].store, tmp_path / "notes" / "mine.txt", "none")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    lz4 = recode_store(lab[1].store, tmp_path / "lz4", "lz4")
    assert lz4["done"] == 12 and verify_store(tmp_path / "lz4") == []
    assert open_store(tmp_path / "lz4").read(source.videos[0].id, "rgb").tobytes() == \
        source.read(source.videos[0].id, "rgb").tobytes()


def test_recode_copies_failures_with_their_reasons_and_leaves_pending_videos_pending(tmp_path):
    from glimpse.store import VideoRecord, create_store

    records = [VideoRecord(id=f"a/v{i}", path=f"/v{i}.avi", labels=(0,), splits={"1": "train"}) for i in range(3)]
    writer = create_store(tmp_path / "src", dataset="d", classes=["a"], records=records, config={"n": 1},
                          streams={"rgb": {"frame_shape": [2, 1, 1]}})
    cube = np.arange(8, dtype=np.float16).reshape(4, 2, 1, 1)
    writer.write_video(video_key("a/v0"), {"rgb": cube}, {"n_frames": 4, "frame_indices": [0, 1, 2, 3]})
    writer.write_failure(video_key("a/v1"), "a/v1.avi: moov atom not found")
    assert recode_store(tmp_path / "src", tmp_path / "copy", "none") == {"done": 1, "failed": 1, "pending": 1}
    copied = {v.id: v for v in open_store(tmp_path / "copy").videos}
    assert [copied[f"a/v{i}"].status for i in range(3)] == ["done", "failed", "pending"]
    assert copied["a/v1"].error == "a/v1.avi: moov atom not found"
    np.testing.assert_array_equal(open_store(tmp_path / "copy").read("a/v0", "rgb"), cube)
