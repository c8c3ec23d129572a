"""Timing helpers of the loading bench, and its table of codec candidates (bench_loading.py writes the section)."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
from zarr.codecs import BloscCodec, ZstdCodec

from glimpse.store.chunks import READ_THREADS

#: codec candidates: name -> (zarr compressor, frames per chunk); the first is the writer's default
CANDIDATES = {
    "zstd-3, 5-frame chunks (default)": (ZstdCodec(level=3), 5),
    "zstd-5, 20-frame chunks (before)": (ZstdCodec(level=5), 20),
    "zstd-1, 5-frame chunks": (ZstdCodec(level=1), 5),
    "zstd-3, 10-frame chunks": (ZstdCodec(level=3), 10),
    "Blosc-zstd-1 byte shuffle, 5-frame chunks": (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), 5),
    "Blosc-LZ4HC bit shuffle, 5-frame chunks": (BloscCodec(cname="lz4hc", clevel=9, shuffle="bitshuffle"), 5),
    "Blosc-LZ4 byte shuffle, 5-frame chunks": (BloscCodec(cname="lz4", shuffle="shuffle"), 5),
    "no compression, 5-frame chunks": (None, 5),
}


def cubes(shape: dict, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` ReLU-like float16 cubes (frames, C, K, K), half zeros."""
    rng = np.random.default_rng(seed)
    frame = (shape["frames"], shape["channels"], shape["size"], shape["size"])
    return [np.maximum(rng.standard_normal(frame, dtype=np.float32), 0).astype(np.float16) for _ in range(count)]

def best(rounds: int, fn) -> float:
    """The shortest of ``rounds`` timed calls of ``fn``, in seconds."""
    return timed(rounds, fn)[0]


def timed(rounds: int, fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread of this process) of the fastest of ``rounds`` calls of ``fn``."""
    times = []
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return min(times)


def interleaved(rounds: int, fns: dict) -> dict[str, tuple[float, float]]:
    """:func:`timed` of each of ``fns``, their rounds taken in turn (so a load that comes and goes hits them alike)."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(1, fn))
    return {k: min(v) for k, v in times.items()}


def on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "zarr.json")


def codec_table(tmp: Path, shape: dict) -> tuple[list[dict], float]:
    """Bytes per value, decoding speed and random-clip time of each candidate through the store's direct path, with
    its chunks decoded in the calling thread and in the reader's pool (Blosc's own threads off: one decoder each),
    and (last) ms per clip of the same clips from an uncompressed h5py copy, every source's rounds taken in turn."""
    import numcodecs.blosc

    from glimpse.store.chunks import StoredStream
    from glimpse.store.video_files import open_video, video_path, write_video_file

    data = cubes(shape, shape["codec_videos"], seed=1)
    rng = np.random.default_rng(2)
    T, frames = shape["clip"], shape["frames"]
    picks = [(int(rng.integers(len(data))), int(rng.integers(frames - T + 1))) for _ in range(shape["clips"])]
    values = sum(c.size for c in data)
    with h5py.File(tmp / "codecs.h5", "w") as f:  # the export's layout: (frames, C*K*K) uncompressed float16 rows
        f.create_dataset("features", data=np.concatenate(data).reshape(len(data) * frames, -1))
    rows, whole, clips = [], {}, {}
    for name, (codec, per) in CANDIDATES.items():
        folder = tmp / "codecs" / name.split(",")[0].replace(" ", "_") / str(per)
        arrays = []
        for i, cube in enumerate(data):  # each cube in a video file of its own, as a store keeps it
            write_video_file(folder, str(i), {}, {"rgb": (cube, codec, None, per)})
            arrays.append(open_video(folder, str(i))["rgb"])
        rows.append({"name": name, "bpv": on_disk(folder) / values})
        for threads in (1, READ_THREADS):
            s = [StoredStream(a, str(folder), Path(video_path(folder, str(i))), threads=threads, prefix="rgb/")
                 for i, a in enumerate(arrays)]
            whole[(name, threads)] = lambda s=s: [x.read() for x in s]
            clips[(name, threads)] = lambda s=s: [s[v].read(a, a + T) for v, a in picks]
    h5 = h5py.File(tmp / "codecs.h5", "r")
    rows_h5 = h5["features"]
    clips["h5py"] = lambda: [rows_h5[v * frames + a : v * frames + a + T] for v, a in picks]
    numcodecs.blosc.use_threads = False
    try:
        whole_s, clip_s = interleaved(shape["rounds"], whole), interleaved(shape["rounds"], clips)
    finally:
        numcodecs.blosc.use_threads = None
        h5.close()
    for row in rows:
        for threads in (1, READ_THREADS):
            row[threads] = (2 * values / whole_s[(row["name"], threads)][0] / 1e9,
                            1e3 * clip_s[(row["name"], threads)][0] / len(picks))
    return rows, 1e3 * clip_s["h5py"][0] / len(picks)
