"""Export to and import from the HDF5 layout of the original soft-attention code, on real and hand-made stores.

The extracted store and the helpers are test_store_tools.py's (the store is extracted once per session).
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from test_store_tools import hand_store, lab_store, run_cli

from glimpse.store import open_store
from glimpse.store.hdf5 import export_hdf5
from glimpse.store.verify import verify_store


@pytest.fixture(scope="module")
def extracted(tiny_synthetic, dask_client, tmp_path_factory):
    """The lab store of test_store_tools.py (extracted once per session)."""
    return lab_store(tiny_synthetic, dask_client, tmp_path_factory)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_export_writes_the_original_layout_and_import_brings_it_back(extracted, tmp_path, dtype):
    s = open_store(extracted)
    out = tmp_path / "export" / "features.h5"
    result = run_cli("export", extracted, out, "--stream", "rgb", "--split", "1",
                     "--dtype", dtype)
    assert result.exit_code == 0, result.output
    assert "2 videos not done left out" in result.output
    rng = np.random.default_rng(0)
    with h5py.File(out, "r") as f:
        assert list(f.attrs["frame_shape"]) == [1024, 2, 2] and list(f.attrs["classes"]) == list(s.classes)
        assert f.attrs["config_hash"] == s.config_hash and sorted(f) == ["test", "train"]
        for role in ("train", "test"):
            expected = [v for v in s.videos if v.status == "done" and v.splits["1"] == role]
            ids = (out.parent / f"{role}_filename.txt").read_text().splitlines()
            frames = [int(x) for x in (out.parent / f"{role}_framenum.txt").read_text().splitlines()]
            labels = [int(x) for x in (out.parent / f"{role}_labels.txt").read_text().splitlines()]
            assert ids == [v.id for v in expected] and frames == [v.n_frames for v in expected]
            assert labels == [v.label for v in expected]
            features = f[role]["features"]
            assert features.dtype == np.dtype(dtype) and features.shape == (sum(frames), 1024 * 2 * 2)
            starts = np.cumsum([0, *frames])
            for v, start in zip(expected, starts, strict=False):
                cube = s.read(v.id, "rgb")  # (T, C, K, K)
                rows = features[start : start + v.n_frames]
                np.testing.assert_array_equal(rows.astype(np.float16), cube.reshape(v.n_frames, -1))
                # the original data_handler: reshape([..., K*K, C], order="F") -> (location, channel)
                t, c, y, x = rng.integers(0, v.n_frames), rng.integers(0, 1024), rng.integers(0, 2), rng.integers(0, 2)
                assert rows[t].reshape(4, 1024, order="F")[y * 2 + x, c] == cube[t, c, y, x].astype(dtype)

    back = tmp_path / "imported"
    result = run_cli("import", out, back, "--dataset", "synthetic")
    assert result.exit_code == 0, result.output
    imported = open_store(back)
    assert imported.classes == s.classes and list(imported.streams) == ["rgb"]
    assert imported.config["source_config_hash"] == s.config_hash
    assert verify_store(back) == []
    originals = {v.id: v for v in s.videos}
    assert len(imported.videos) == 12
    for v in imported.videos:
        source = originals[v.id]
        assert v.status == "done" and v.labels == source.labels and v.splits == {"1": source.splits["1"]}
        assert v.frame_indices == source.frame_indices and v.timestamps == source.timestamps
        mine, theirs = imported.read(v.id, "rgb"), s.read(v.id, "rgb")
        assert mine.dtype == np.float16 and np.array_equal(mine, theirs)


MULTI = [("m/1", (0, 2), {"1": "train", "2": "test"}, 3), ("m/2", (1,), {"1": "train", "2": "train"}, 2),
         ("m/3", (3, 1, 0), {"1": "test", "2": "train"}, 4), ("m/4", (2,), {"1": "test", "2": "unused"}, 0),
         ("m/5", (3,), {"1": "unused", "2": "test"}, 1)]


def test_multi_label_round_trip_through_side_files_and_through_the_file_alone(tmp_path):
    cubes = hand_store(tmp_path / "hand", MULTI, classes=("a", "b", "c", "d"), stream="flow_cnn",
                       frame_shape=(6, 2, 2))
    out = tmp_path / "x" / "multi.h5"
    summary = export_hdf5(tmp_path / "hand", out, stream="flow_cnn", split="2")
    assert summary["roles"] == {"train": {"videos": 2, "frames": 6}, "test": {"videos": 2, "frames": 4}}
    assert (out.parent / "train_labels.txt").read_text() == "0,1,0,0\n1,1,0,1\n"  # m/2, m/3: original multi-hot
    assert (out.parent / "test_filename.txt").read_text() == "m/1\nm/5\n"
    for where, source in (("side files", tmp_path / "x"), ("file alone", tmp_path / "alone")):
        if where == "file alone":
            source.mkdir()
            shutil.copy(out, source / "multi.h5")  # no text files beside it: the datasets inside are used
        back = tmp_path / f"back-{source.name}"
        run = run_cli("import", source / "multi.h5", back, "--dataset", "hand")
        assert run.exit_code == 0, run.output
        imported = open_store(back)
        got = {v.id: v for v in imported.videos}
        assert set(got) == {"m/1", "m/2", "m/3", "m/5"}, where
        for video_id, labels, splits, _n in MULTI:
            if video_id in got:
                assert set(got[video_id].labels) == set(labels) and got[video_id].splits == {"2": splits["2"]}
                assert np.array_equal(imported.read(video_id, "flow_cnn"), cubes[video_id]), where
                assert got[video_id].frame_indices == tuple(range(1, 3 * len(cubes[video_id]), 3))


def test_import_refuses_files_it_cannot_trust_and_names_them(tmp_path):
    hand_store(tmp_path / "hand", MULTI[:3], classes=("a", "b", "c", "d"))
    out = tmp_path / "x" / "f.h5"
    export_hdf5(tmp_path / "hand", out, split="1")

    (out.parent / "train_framenum.txt").write_text("3\n2\n7\n")
    result = run_cli("import", out, tmp_path / "s1", "--dataset", "hand")
    assert result.exit_code == 1 and "train_framenum.txt: 3 lines" in result.output

    (out.parent / "train_framenum.txt").write_text("3\n3\n")
    result = run_cli("import", out, tmp_path / "s2", "--dataset", "hand")
    assert result.exit_code == 1 and "train_framenum.txt: frame counts sum to 6" in result.output

    (out.parent / "train_framenum.txt").write_text("3\n2\n")
    (out.parent / "test_labels.txt").write_text("0,1\n")
    result = run_cli("import", out, tmp_path / "s3", "--dataset", "hand")
    assert result.exit_code == 1 and "test_labels.txt: bad labels line '0,1'" in result.output

    (out.parent / "test_labels.txt").unlink()
    with h5py.File(out, "a") as f:
        del f.attrs["frame_shape"]
    result = run_cli("import", out, tmp_path / "s4", "--dataset", "hand")
    assert result.exit_code == 1 and f"{out}: no 'frame_shape' attribute" in result.output
    assert not (tmp_path / "s4").exists()


def test_export_refuses_unknown_streams_and_splits(extracted, tmp_path):
    result = run_cli("export", extracted, tmp_path / "a.h5", "--stream", "depth")
    assert result.exit_code == 1 and "stream 'depth' was not extracted" in result.output
    result = run_cli("export", extracted, tmp_path / "a.h5", "--split", "7")
    assert result.exit_code == 1 and "no split '7'" in result.output


