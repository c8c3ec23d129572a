"""The store's lab tools (ls, info, verify, export / import HDF5, read-only sharing) on real stores.

One store is made by the real extraction stage (tiny synthetic videos plus bad files, a real Dask
cluster, a real torchvision GoogLeNet, Farneback flow); small hand-written stores with known numbers
cover the exact cases. Tests that damage a store damage a copy.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from extraction import extract
from store_files import edit_entry

from glimpse.store import VideoRecord, create_store, open_store
from glimpse.store.catalog import store_info, store_summary
from glimpse.store.cli import main
from glimpse.store.hdf5 import export_hdf5
from glimpse.store.layout import video_key
from glimpse.store.verify import run_verify, verify_store

OPTS = {"backbone": "googlenet", "weights": "none", "size": 64, "frames": 4, "batch_size": 8, "flow": "farneback"}
REPO = Path(__file__).resolve().parents[1]
STREAMS = ("rgb", "flow", "flow_cnn")


def lab_store(tiny_synthetic: Path, dask_client, tmp_path_factory) -> Path:
    """A store extracted once per session from the tiny synthetic dataset plus two listed files that cannot
    be decoded (an empty one and a text file): 12 done videos (rgb, flow, flow_cnn; 4 frames each), 2 failed.
    test_store_hdf5.py calls this too and finds the store made."""
    base = tmp_path_factory.getbasetemp() / "store-tools-lab"
    out = base / "stores" / "synthetic" / "googlenet-f4"
    if (out / "zarr.json").exists():
        return out
    root = base / "data"
    shutil.copytree(tiny_synthetic, root)
    first_class = (root / "ucfTrainTestlist" / "classInd.txt").read_text().split()[1]
    bad = [root / "UCF-101" / first_class / f"v_{first_class}_g90_c0{i}.avi" for i in (1, 2)]
    bad[0].write_bytes(b"")
    bad[1].write_text("not a video\n" * 50)
    trainlist = root / "ucfTrainTestlist" / "trainlist01.txt"
    trainlist.write_text(trainlist.read_text() + "".join(f"{first_class}/{p.name} 1\n" for p in bad))
    summary = extract("synthetic", str(root), str(out), client=dask_client, **OPTS)
    assert len(summary.failed) == 2 and summary.done == 12, summary.report()
    return out


@pytest.fixture(scope="module")
def extracted(tiny_synthetic, dask_client, tmp_path_factory) -> Path:
    """The session's lab store (see lab_store); copy it before damaging it."""
    return lab_store(tiny_synthetic, dask_client, tmp_path_factory)


def copy_of(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy" / store.name
    shutil.copytree(store, target)
    return target


def hand_store(path: Path, videos: list[tuple[str, tuple[int, ...], dict, int]], classes=("a", "b", "c"),
               stream: str = "rgb", frame_shape=(8, 3, 3), seed: int = 0) -> dict[str, np.ndarray]:
    """A store written directly: videos are (id, labels, splits, frames); 0 frames records a failure.
    Returns the float16 cube of every done video."""
    records = [VideoRecord(id=i, path=f"/videos/{i}.avi", labels=labels, splits=splits)
               for i, labels, splits, _ in videos]
    writer = create_store(path, dataset="hand", classes=classes, records=records,
                          config={"dataset": "hand", "frames": 3, "seed": seed},
                          streams={stream: {"frame_shape": list(frame_shape)}},
                          info={"backbone": "handnet", "layer": "last", "weights": "sha256:feed"})
    rng = np.random.default_rng(seed)
    cubes = {}
    for video_id, _labels, _splits, n in videos:
        if n == 0:
            writer.write_failure(video_key(video_id), f"/videos/{video_id}.avi: decoder said no")
            continue
        cube = rng.standard_normal((n, *frame_shape)).astype(np.float16)  # (T, C, K, K)
        writer.write_video(video_key(video_id), {stream: cube},
                           {"n_frames": n, "frame_indices": list(range(1, 3 * n, 3)),
                            "timestamps": [i / 25 for i in range(1, 3 * n, 3)]})
        cubes[video_id] = cube
    return cubes


def edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def edited(meta: dict, change) -> dict:
    change(meta)
    return meta


def run_cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


# ---------------------------------------------------------------------------------------------- ls


def test_ls_lists_every_store_with_provenance_counts_and_size(extracted, tmp_path):
    root = tmp_path / "stores"
    shutil.copytree(extracted, root / "synthetic" / "googlenet-f4")
    hand_store(root / "hand" / "made", [("x/1", (0,), {"1": "train"}, 3), ("x/2", (1,), {"1": "test"}, 0)])
    hand_store(root / "hand" / "made" / "videos" / "decoy", [("d", (0,), {"1": "train"}, 1)])  # in videos/: skipped
    hand_store(root / "old" / "v0", [("y", (0,), {"1": "train"}, 2)])
    edit_json(root / "old" / "v0" / "zarr.json", lambda m: m["attributes"]["glimpse"].update(schema_version=0))
    (root / "junk").mkdir()
    (root / "junk" / "zarr.json").write_text("{half a json")
    zarr.open_group(str(root / "plain"), mode="w", zarr_format=3)  # a Zarr group that is no store: searched
    hand_store(root / "plain" / "inner", [("z", (2,), {"1": "test"}, 4)])

    result = run_cli("ls", root, "--json")
    assert result.exit_code == 0, result.output
    rows = {str(Path(r["path"]).relative_to(root)): r for r in json.loads(result.output)}
    assert set(rows) == {"synthetic/googlenet-f4", "hand/made", "old/v0", "junk", "plain/inner"}
    assert "schema version 0" in rows["old/v0"]["error"]
    assert "JSON" in rows["junk"]["error"] or "Expecting" in rows["junk"]["error"]
    assert (rows["hand/made"]["done"], rows["hand/made"]["failed"], rows["hand/made"]["total"]) == (1, 1, 2)

    row = rows["synthetic/googlenet-f4"]
    assert (row["dataset"], row["backbone"], row["layer"]) == ("synthetic", "googlenet", "inception5b")
    assert (row["sampling"], row["flow"], row["weights"]) == ("frames 4", "farneback", "none")
    assert (row["done"], row["failed"], row["total"]) == (12, 2, 14)
    assert row["created_by"] == getpass.getuser() and datetime.fromisoformat(row["created"]).year >= 2024
    s = open_store(root / "synthetic" / "googlenet-f4")
    raw = sum(s.read(v.id, name).nbytes for v in s.videos if v.status == "done" for name in STREAMS)
    disk = sum(f.stat().st_size for f in (root / "synthetic" / "googlenet-f4").rglob("*") if f.is_file())
    assert (row["raw_bytes"], row["disk_bytes"]) == (raw, disk)
    assert row["compression"] == pytest.approx(raw / disk)

    table = run_cli("ls", env={"STORE_ROOT": str(root)})  # ROOT from the environment
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    header = lines[0]
    assert header.split()[:3] == ["store", "dataset", "backbone/layer"]
    good = [line for line in lines[1:] if "ERROR" not in line]
    assert len(good) == 3 and sum("ERROR" in line for line in lines) == 2
    for line in good:  # aligned: every column starts where its header does
        for column, value in (("dataset", line.split()[1]), ("sampling", "frames")):
            assert line[header.index(column):].startswith(value), (line, column)
    assert any(line.startswith("old/v0: ERROR") for line in lines)


def test_ls_does_not_import_torch(extracted):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "glimpse.store", "ls", str(extracted.parent)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "googlenet-f4" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import")}
    assert "zarr" in imported, "importtime output not understood"
    assert "torch" not in imported and "h5py" not in imported


# ---------------------------------------------------------------------------------------------- info


def test_info_prints_config_versions_streams_classes_and_failures(extracted):
    s = open_store(extracted)
    result = run_cli("info", extracted, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["config"] == s.config and info["config_hash"] == s.config_hash
    assert info["weights"] == "none" and set(info["versions"]) >= {"torch", "torchvision", "av", "zarr"}
    shapes = {name: desc["stored_frame_shapes"] for name, desc in info["streams"].items()}
    assert shapes == {"rgb": {"[1024, 2, 2]": 12}, "flow": {"[2, 64, 64]": 12}, "flow_cnn": {"[1024, 2, 2]": 12}}
    assert info["streams"]["flow"]["method"] == "farneback"
    assert info["videos"] == {"total": 14, "done": 12, "failed": 2} and info["frames"] == 48
    assert [c["done"] for c in info["classes"].values()] == [4, 4, 4]
    assert sorted(c["failed"] for c in info["classes"].values()) == [0, 0, 2]  # the bad files share one class
    failures = {f["id"]: f["error"] for f in info["failures"]}
    assert failures == {v.id: v.error for v in s.videos if v.status == "failed"} and len(failures) == 2
    text = run_cli("info", extracted)
    assert text.exit_code == 0, text.output
    assert f"config hash  {s.config_hash}" in text.output
    assert json.dumps(s.config, indent=2, sort_keys=True) in text.output
    assert all(f"{vid}: {why}" in text.output for vid, why in failures.items())


# ---------------------------------------------------------------------------------------------- verify


def test_verify_passes_a_clean_store(extracted):
    assert verify_store(extracted) == []
    result = run_cli("verify", extracted)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK ") and len(result.output.strip().splitlines()) == 1
    assert "12 done videos verified (rgb, flow, flow_cnn)" in result.output and "2 failed" in result.output


def flip_position(chunk: bytes, kind: str) -> int:
    """A byte whose flip makes zstd fail ("undecodable") or decode other values of the same size ("changed")."""
    codec = numcodecs.Zstd()
    original = codec.decode(chunk)
    for pos in range(len(chunk) // 2, len(chunk)) if kind == "changed" else range(len(chunk)):
        flipped = bytearray(chunk)
        flipped[pos] ^= 0xFF
        try:
            out = codec.decode(bytes(flipped))
        except Exception:
            if kind == "undecodable":
                return pos
            continue
        if kind == "changed" and len(out) == len(original) and bytes(out) != bytes(original):
            return pos
    raise AssertionError(f"no byte flip of kind {kind} found")


@pytest.mark.parametrize(("kind", "reason"), [("undecodable", "chunk data does not decode"),
                                              ("changed", "sha256 differs")])
def test_verify_names_the_video_with_a_flipped_chunk_byte(extracted, tmp_path, kind, reason):
    store = copy_of(extracted, tmp_path)
    victim = [v for v in open_store(store).videos if v.status == "done"][5]

    def flip(chunk: bytes) -> bytes:
        data = bytearray(chunk)
        data[flip_position(chunk, kind)] ^= 0xFF
        return bytes(data)

    edit_entry(store, victim.key, "rgb/c/0/0/0/0", flip)
    bad = verify_store(store)
    assert [vid for vid, _ in bad] == [victim.id]
    assert reason in bad[0][1] and f"videos/{victim.key}.zip/rgb" in bad[0][1]
    result = run_cli("verify", store)
    assert result.exit_code == 1 and victim.id in result.output and reason in result.output


def set_shape(shape: list[int], chunks: bool = False):
    """An edit of an array's zarr.json that claims ``shape`` (and the same chunk shape when ``chunks``)."""
    def change(meta):
        meta["shape"] = shape
        if chunks:
            meta["chunk_grid"]["configuration"]["chunk_shape"] = shape
    return change


SHAPE_LIES = {
    # case: (entry of the video's file, or file of the store, to edit; edit; videos that go bad; phrase in the reason)
    "array frame shape": ("rgb/zarr.json", set_shape([4, 1024, 3, 3]), 1,
                          "per-frame shape (1024, 3, 3) but the store declares (1024, 2, 2)"),
    "array frame count": ("flow_cnn/zarr.json", set_shape([5, 1024, 2, 2]), 1,
                          "5 frames stored but n_frames is 4"),
    "flow chunk shape": ("flow/zarr.json", set_shape([4, 2, 64, 32], chunks=True), 1,
                         "chunk data does not decode"),
    "frame indices": ("zarr.json", lambda m: m["attributes"]["video"]["frame_indices"].pop(), 1,
                      "frame counts disagree: n_frames 4, frame_indices 3, timestamps 4"),
    "root frame shape": ("STORE/zarr.json",
                         lambda m: m["attributes"]["glimpse"]["streams"]["rgb"].update(frame_shape=[1024, 3, 3]), 12,
                         "per-frame shape (1024, 2, 2) but the store declares (1024, 3, 3)"),
}


@pytest.mark.parametrize("case", sorted(SHAPE_LIES))
def test_verify_reports_metadata_that_lies_about_shapes(extracted, tmp_path, case):
    relative, change, n_bad, phrase = SHAPE_LIES[case]
    store = copy_of(extracted, tmp_path)
    victim = [v for v in open_store(store).videos if v.status == "done"][2]
    if relative.startswith("STORE/"):
        edit_json(store / relative.removeprefix("STORE/"), change)
    else:
        edit_entry(store, victim.key, relative, lambda data: json.dumps(edited(json.loads(data), change)).encode())
    bad = dict(verify_store(store))
    assert len(bad) == n_bad and victim.id in bad
    assert all(phrase in why for why in bad.values()), bad[victim.id]
    assert run_cli("verify", store).exit_code == 1


def test_verify_reports_nan_missing_arrays_lost_chunks_and_unreadable_metadata(extracted, tmp_path):
    store = copy_of(extracted, tmp_path)
    nan, missing, lost, unreadable = [v for v in open_store(store).videos if v.status == "done"][:4]

    def one_nan(chunk: bytes) -> bytes:  # rgb[1, 0, 0, 0] of a chunk of (frames, 1024, 2, 2) float16
        values = np.frombuffer(numcodecs.Zstd().decode(chunk), np.float16).copy()
        values[1024 * 2 * 2] = np.nan
        return numcodecs.Zstd(level=3).encode(values.tobytes())

    edit_entry(store, nan.key, "rgb/c/0/0/0/0", one_nan)
    edit_entry(store, missing.key, "flow_cnn/", lambda _: None)
    edit_entry(store, lost.key, "flow/c/0/0/0/0", lambda _: None)
    edit_entry(store, unreadable.key, "zarr.json", lambda _: b"{not json")
    bad = dict(verify_store(store))
    assert set(bad) == {nan.id, missing.id, lost.id, unreadable.id}
    assert "1 values are NaN or Inf" in bad[nan.id] and "sha256 differs" in bad[nan.id]
    assert f"videos/{missing.key}.zip/flow_cnn: array missing" in bad[missing.id]
    assert f"videos/{lost.key}.zip/flow: sha256 differs" in bad[lost.id]
    assert f"videos/{unreadable.key}.zip" in bad[unreadable.id]
    result = run_cli("verify", store)
    assert result.exit_code == 1 and all(vid in result.output for vid in bad)


# ---------------------------------------------------------------------------------------------- sharing


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file's bytes, mode and mtime and every folder's listing and mtime under ``root``."""
    seen = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.stat()
        if path.is_dir():
            seen[str(path.relative_to(root))] = ("dir", sorted(p.name for p in path.iterdir()), st.st_mtime_ns,
                                                 stat.S_IMODE(st.st_mode))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[str(path.relative_to(root))] = ("file", digest, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return seen


def test_training_reads_and_the_tools_never_write_a_read_only_store(extracted, tmp_path):
    """chmod a-w is what a shared lab store looks like. Tests run as root, where chmod stops nothing, so
    what proves "never writes" is (1) the reader's Zarr store is opened read-only, so Zarr refuses any
    write through it, and (2) every file's bytes and mtime and every folder's listing and mtime are the
    same after reading every video, verify, info, ls and export as before."""
    store = copy_of(extracted, tmp_path)
    for path in [store, *store.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        before = snapshot(store)
        s = open_store(store)
        assert s.root.store.read_only
        with pytest.raises(ValueError, match="read-only"):
            s.root.attrs["touched"] = True
        done = [v for v in s.videos if v.status == "done"]
        for v in done:
            assert s.read(v.id, "rgb", frames=slice(0, 2)).shape == (2, 1024, 2, 2)
            assert s.read(v.id, "flow").shape == (4, 2, 64, 64)
        assert run_verify(store).ok and len(done) == 12
        assert store_info(store)["videos"]["done"] == 12 and store_summary(store)["done"] == 12
        assert run_cli("ls", store.parent).exit_code == 0
        export_hdf5(store, tmp_path / "elsewhere" / "f.h5")
        assert snapshot(store) == before
    finally:
        for path in [store, *store.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_fsspec_file_url_reads_like_a_local_path(extracted):
    url = extracted.resolve().as_uri()
    assert url.startswith("file:///")
    local, remote = open_store(extracted), open_store(url)
    assert [(v.id, v.status, v.checksums) for v in remote.videos] == [(v.id, v.status, v.checksums)
                                                                       for v in local.videos]
    for v in local.videos:
        if v.status == "done":
            for name in STREAMS:
                assert np.array_equal(remote.read(v.id, name), local.read(v.id, name))
    assert verify_store(url) == []
    assert store_summary(url)["disk_bytes"] == store_summary(extracted)["disk_bytes"]
    assert store_info(url)["videos"] == store_info(extracted)["videos"]
