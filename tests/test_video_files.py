"""One file per video (store.video_files): few files whatever a video's length, every stream read back equal through
zarr and through the direct reader, old per-array stores converted with the same values and checksums, and a
writer killed mid-file leaving no half video."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import zarr
from zarr.storage import ZipStore

from glimpse.store import VideoRecord, create_store, open_store
from glimpse.store.layout import array_checksum, video_key
from glimpse.store.maintenance import collect_garbage
from glimpse.store.reader import StoreError
from glimpse.store.verify import verify_store
from glimpse.store.video_files import opened_video, temporary_files, upgrade_video_layout, video_bytes, video_path

SHAPES = {"rgb": (8, 2, 2), "flow": (2, 6, 4), "flow_cnn": (8, 2, 2)}
REPO = Path(__file__).resolve().parents[1]


def cube(frames: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((frames, *shape), dtype=np.float32)
    return np.maximum(data, 0).astype(np.float16)


def flow_store(path: Path, lengths: list[int], codec: str = "none"):
    """A store with flow of videos v0, v1, ... of ``lengths`` frames (tiny frames), written by the writer."""
    records = [VideoRecord(id=f"v{i}", path=f"/videos/v{i}.avi", labels=(0,), splits={"1": "train"})
               for i in range(len(lengths))]
    writer = create_store(path, dataset="hand", classes=("a",), records=records, config={"c": codec}, codec=codec,
                          streams={name: {"frame_shape": list(shape)} for name, shape in SHAPES.items()})
    written = {}
    for i, n in enumerate(lengths):
        arrays = {name: cube(n, shape, 10 * i + j) for j, (name, shape) in enumerate(SHAPES.items())}
        writer.write_video(f"v{i}", arrays, {"n_frames": n, "frame_indices": list(range(n)),
                                             "timestamps": [t / 30 for t in range(n)]})
        written[f"v{i}"] = arrays
    return writer, written


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_300_frame_video_with_flow_is_one_file_read_back_equal_through_zarr_and_the_direct_reader(codec, tmp_path):
    path = tmp_path / "s"
    _, written = flow_store(path, [300, 7], codec)
    files = [p for p in (path / "videos").rglob("*") if p.is_file()]
    per_video = {key: [p for p in files if p.name.startswith(key)] for key in written}
    assert all(len(found) == 1 for found in per_video.values()), per_video  # at most 3 asked; one written
    assert len(files) == len(written) + 1  # and the videos group's zarr.json
    store = open_store(path)
    for key, arrays in written.items():
        assert video_bytes(path, key) == Path(video_path(path, key)).stat().st_size
        video = zarr.open_group(ZipStore(video_path(path, key), mode="r"), mode="r")  # plain zarr reads it
        for name, data in arrays.items():
            stream = store.stream(key, name)
            assert stream.direct
            np.testing.assert_array_equal(cast(zarr.Array, video[name])[...], data)
            np.testing.assert_array_equal(stream.read(), data)
            np.testing.assert_array_equal(stream.read(3, 41), data[3:41])  # cuts chunks at both ends
            np.testing.assert_array_equal(store.read(key, name, frames=[5, 2, 6]), data[[5, 2, 6]])
    assert verify_store(path) == []


def per_array_store(path: Path, codec: str) -> dict[str, dict[str, np.ndarray]]:
    """The same store as :func:`flow_store` written in the old layout: each array its own folder of chunk files
    (what the writer before one-file videos made), plus a video left half-written (no attributes)."""
    writer, written = flow_store(path, [12, 9, 4], codec)
    for key in written:
        with opened_video(path, key) as video:
            group = zarr.open_group(str(path / "videos" / key), mode="w", zarr_format=3,
                                    attributes=dict(video.attrs))
            for name, array in video.arrays():
                group.create_array(name, data=np.asarray(array[...]), chunks=array.chunks,
                                   compressors=array.compressors,
                                   dimension_names=getattr(array.metadata, "dimension_names", None))
        Path(video_path(path, key)).unlink()
    half = zarr.open_group(str(path / "videos" / "v9"), mode="w", zarr_format=3)
    half.create_array("rgb", data=cube(2, (8, 2, 2), 0))
    return written


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_upgrade_converts_a_per_array_store_with_identical_values_and_checksums(codec, tmp_path):
    path = tmp_path / "old"
    written = per_array_store(path, codec)
    with pytest.raises(StoreError, match="one folder per video.*glimpse.store upgrade"):
        open_store(path)
    if codec == "none":
        assert upgrade_video_layout(path) == len(written)
    else:  # what 'python -m glimpse.store upgrade' runs
        done = subprocess.run([sys.executable, "-m", "glimpse.store", "upgrade", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (path / "videos").iterdir()) == ["v0.zip", "v1.zip", "v2.zip", "zarr.json"]
    store = open_store(path)
    for key, arrays in written.items():
        entry = store.video(key)
        assert entry.status == "done" and entry.checksums == {n: array_checksum(a) for n, a in arrays.items()}
        for name, data in arrays.items():
            np.testing.assert_array_equal(store.read(key, name), data)
            assert store.stream(key, name).direct
    assert verify_store(path) == []
    assert upgrade_video_layout(path) == 0  # already converted: nothing to do


KILLED_WRITER = textwrap.dedent("""
    import sys, zipfile
    from glimpse.store.writer import StoreWriter
    real = zipfile.ZipFile.writestr
    def slow(self, name, data, *args, **kwargs):
        real(self, name, data, *args, **kwargs)
        if name.startswith("flow/c/"):
            self.fp.flush()
            print("half", flush=True)
            sys.stdin.read()  # killed here, half of the video's file written
    zipfile.ZipFile.writestr = slow
    import numpy as np
    w = StoreWriter(sys.argv[1])
    arrays = {n: np.ones((300, *s), np.float16) for n, s in %r.items()}
    w.write_video("v0", arrays, {"n_frames": 300})
""") % (SHAPES,)


def test_a_writer_killed_mid_file_leaves_no_half_video(tmp_path):
    path = tmp_path / "s"
    _, written = flow_store(path, [12], "zstd")
    before = Path(video_path(path, "v0")).read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"half"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = temporary_files(path)
    assert [key for key, _ in left] == ["v0"] and left[0][1].stat().st_size > 0
    assert Path(video_path(path, "v0")).read_bytes() == before  # the finished video is untouched
    store = open_store(path)
    assert [v.status for v in store.videos] == ["done"] and store.video("v0").n_frames == 12
    np.testing.assert_array_equal(store.read("v0", "flow"), written["v0"]["flow"])
    assert collect_garbage(path).groups == ["v0"] and temporary_files(path) == []
    assert verify_store(path) == [] and video_key("v0") == "v0"
