"""Lab roots (content-addressed stores), store gc and store repair, on stores made by the real extraction."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from glimpse.extract.cli import extract_dataset
from glimpse.store import StoreError, open_store
from glimpse.store.catalog import resolve_store
from glimpse.store.claims import claim_video
from glimpse.store.layout import video_key
from glimpse.store.maintenance import collect_garbage, extraction_options
from glimpse.store.verify import verify_store
from test_extract import REPO, TINY_OPTS


@pytest.fixture(scope="module")
def lab(tiny_synthetic, dask_client, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    first = extract_dataset("synthetic", str(tiny_synthetic), lab=str(root), client=dask_client, **TINY_OPTS)
    return root, first


def test_the_same_features_asked_twice_land_in_the_same_store(lab, tiny_synthetic, dask_client):
    root, first = lab
    assert first.done == 12
    again = extract_dataset("synthetic", str(tiny_synthetic), lab=str(root), client=dask_client, **TINY_OPTS)
    assert again.store == first.store and again.skipped == 12 and again.done == 0
    store = open_store(first.store)
    assert first.store == str(root / "synthetic" / f"googlenet-{store.config_hash}")
    assert resolve_store(root, "synthetic").path == first.store
    other = extract_dataset("synthetic", str(tiny_synthetic), lab=str(root), client=dask_client,
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
    group = zarr.open_group(str(store_path), mode="r+")[f"videos/{video_key(crashed.id)}"]
    group.attrs["video"] = {"status": "writing"}  # as a writer killed between its arrays and its "done"
    (store_path / "videos" / video_key(crashed.id) / "rgb" / "zarr.json.abc.partial").write_bytes(b"half")
    group_live = zarr.open_group(str(store_path), mode="r+")[f"videos/{video_key(live.id)}"]
    group_live.attrs["video"] = {"status": "writing"}
    with claim_video(store_path, video_key(live.id)):  # a live run is writing this one
        cleanup = collect_garbage(store_path)
    assert cleanup.groups == [crashed.id] and cleanup.partial_files == 1 and cleanup.busy == [live.id]
    after = {v.id: v.status for v in open_store(store_path).videos}
    assert after[crashed.id] == "pending" and after[live.id] == "writing"
    assert not (store_path / "videos" / video_key(crashed.id)).exists()


def test_repair_redoes_a_corrupted_video_through_the_extraction_stage(lab, tmp_path):
    store_path = tmp_path / "s"
    shutil.copytree(lab[1].store, store_path)
    victim = open_store(store_path).videos[4]
    original = open_store(store_path).read(victim.id, "rgb")
    chunk = next((store_path / "videos" / video_key(victim.id) / "rgb").rglob("c/*/*/*/*"))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
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
    import inspect

    options = extraction_options(lab[1].store)
    assert set(options) <= set(inspect.signature(extract_dataset).parameters)
    assert options["out"] == lab[1].store and options["dataset"] == "synthetic"
