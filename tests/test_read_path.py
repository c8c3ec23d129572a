"""The store's direct read path (StoredStream.read) against zarr's own read of the same arrays, for every codec
the reader decodes itself, in one thread and in several, with a partial last chunk and chunks never written."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
import zarr
from store_files import edit_entry, edit_zip, zipped_array
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import ZipStore

from glimpse.store.chunks import StoredStream
from glimpse.store.reader import StoreError
from glimpse.store.video_files import open_video

CODECS = {
    "zstd": ZstdCodec(level=3),
    "blosc-lz4-shuffle": BloscCodec(cname="lz4", shuffle="shuffle"),
    "blosc-zstd-bitshuffle": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    "blosc-lz4hc-noshuffle": BloscCodec(cname="lz4hc", shuffle="noshuffle"),
    "none": None,
}
RANGES = [(0, 17), (3, 4), (4, 11), (5, 10), (15, 17), (14, 16), (10, 99), (5, 5), (0, 5), (12, 17)]


def relu_cube(frames: int = 17, shape=(6, 3, 3), seed: int = 0) -> np.ndarray:
    """(frames, C, K, K) float16, half zeros, like the feature cubes a store holds."""
    data = np.random.default_rng(seed).standard_normal((frames, *shape), dtype=np.float32)
    return np.maximum(data, 0).astype(np.float16)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("codec", list(CODECS))
def test_direct_reads_equal_zarrs_reads(codec, threads, tmp_path):
    where = tmp_path / "rgb.zip"
    data = relu_cube()  # 17 frames in chunks of 5: the last chunk holds 2
    array = zipped_array(where, data, chunks=(5, *data.shape[1:]), compressors=CODECS[codec], fill_value=7.0)
    stream = StoredStream(array, str(where), where, threads=threads)
    assert stream.direct
    for lo, hi in RANGES:
        np.testing.assert_array_equal(stream.read(lo, hi), array[lo:hi], err_msg=f"{codec} {lo}..{hi}")
    out = np.full((6, *data.shape[1:]), np.nan, np.float16)
    assert stream.read(9, 15, out=out) is out
    np.testing.assert_array_equal(out, array[9:15])
    np.testing.assert_array_equal(stream.read(), data)
    for c in ("1", "3"):  # chunks never written (a middle one and the partial last one) read as the fill value
        edit_zip(where, f"c/{c}/0/0/0", lambda _: None)
    again = zarr.open_array(ZipStore(where, mode="r"), mode="r")
    stream = StoredStream(again, str(where), where, threads=threads)
    for lo, hi in RANGES:
        np.testing.assert_array_equal(stream.read(lo, hi), again[lo:hi], err_msg=f"{codec} {lo}..{hi}, missing")


def test_layouts_the_reader_does_not_decode_itself_go_through_zarr(tmp_path):
    data = relu_cube()
    arrays = {"sharded": zipped_array(tmp_path / "sharded", data, chunks=(5, *data.shape[1:]),
                                      shards=(10, *data.shape[1:]), compressors=ZstdCodec(level=3)),
              "split": zipped_array(tmp_path / "split", data, chunks=(5, 3, 3, 3), compressors=ZstdCodec(level=3))}
    for name, array in arrays.items():
        stream = StoredStream(array, name, tmp_path / name)
        assert not stream.direct
        for lo, hi in RANGES:
            np.testing.assert_array_equal(stream.read(lo, hi), array[lo:hi])


def test_a_bad_out_or_a_short_chunk_is_a_clear_error(tmp_path):
    where = tmp_path / "rgb.zip"
    stream = StoredStream(zipped_array(where, relu_cube(), chunks=(5, 6, 3, 3), compressors=None), str(where), where)
    with pytest.raises(ValueError, match="out is float32"):
        stream.read(0, 5, out=np.empty((5, 6, 3, 3), np.float32))
    edit_zip(where, "c/1/0/0/0", lambda chunk: chunk[:-2])
    stream = StoredStream(zarr.open_array(ZipStore(where, mode="r"), mode="r"), str(where), where)
    with pytest.raises(StoreError, match="chunk 1 holds"):
        stream.read(4, 12)


FRAME = (1024, 7, 7)  # 100 kB a frame: the writer's chunks hold 5 frames, so 17 frames span 4 chunks, the last cut
PICKS = [slice(None), slice(3, 14), slice(4, 5), slice(12, 99), slice(-6, None), slice(9, 3), slice(1, 16, 3),
         slice(None, None, -4), [0, 16, 5, 5, 9], [-1, -17, 2], [7], []]


def written_store(path, codec: str, frames: int = 17, seed: int = 0):
    """A store of one video ``v`` (``frames`` frames of FRAME) written by the store's writer with ``codec``."""
    from glimpse.store import VideoRecord, create_store
    from glimpse.store.layout import video_key

    records = [VideoRecord(id="v", path="/videos/v.avi", labels=(0,), splits={"1": "train"})]
    writer = create_store(path, dataset="hand", classes=("a",), records=records, config={"seed": seed}, codec=codec,
                          streams={"rgb": {"frame_shape": list(FRAME)}})
    writer.write_video(video_key("v"), {"rgb": relu_cube(frames, FRAME, seed)}, {"n_frames": frames})
    return writer


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_store_read_equals_zarrs_values_for_frame_slices_and_lists(codec, tmp_path):
    from glimpse.store import open_store

    written_store(tmp_path / "s", codec)
    store = open_store(tmp_path / "s")
    array = cast(zarr.Array, open_video(tmp_path / "s", "v")["rgb"])
    assert array.chunks[0] == 5 and store.stream("v").direct
    whole = np.asarray(array[...])
    for frames in PICKS:
        got = store.read("v", "rgb", frames=frames)
        np.testing.assert_array_equal(got, whole[frames], err_msg=f"{codec} {frames}")
        if not isinstance(frames, slice) or (frames.step or 1) > 0:  # zarr indexes neither backwards nor negatives
            index = frames if isinstance(frames, slice) else np.array([f % 17 for f in frames], np.int64)
            np.testing.assert_array_equal(got, array.get_orthogonal_selection(index), err_msg=f"{codec} {frames}")
    np.testing.assert_array_equal(store.read("v"), whole)
    for bad in ([17], [0, -18]):
        with pytest.raises(StoreError, match=r"video 'v': frames \[(17|-18)\] out of range, it has 17 frames"):
            store.read("v", "rgb", frames=bad)


def test_store_read_takes_the_direct_chunk_reader(tmp_path):
    """A short chunk of a --codec none store is the direct reader's error (zarr's read would say something else)."""
    from glimpse.store import open_store

    written_store(tmp_path / "s", "none")
    edit_entry(tmp_path / "s", "v", "rgb/c/1/0/0/0", lambda chunk: chunk[:-2])
    store = open_store(tmp_path / "s")
    np.testing.assert_array_equal(store.read("v", frames=slice(0, 5)), relu_cube(17, FRAME)[:5])
    with pytest.raises(StoreError, match="chunk 1 holds"):
        store.read("v", frames=[3, 7])


def test_store_read_follows_a_video_written_again(tmp_path):
    from glimpse.store import open_store
    from glimpse.store.layout import video_key

    writer = written_store(tmp_path / "s", "zstd")
    store = open_store(tmp_path / "s")
    np.testing.assert_array_equal(store.read("v", frames=slice(2, 9)), relu_cube(17, FRAME, 0)[2:9])
    writer.write_video(video_key("v"), {"rgb": relu_cube(11, FRAME, 1)}, {"n_frames": 11})
    np.testing.assert_array_equal(store.read("v"), relu_cube(11, FRAME, 1))  # 11 frames now, other values
    writer.reset(video_key("v"))
    with pytest.raises(StoreError, match="video 'v' is pending, not done"):
        store.read("v")
