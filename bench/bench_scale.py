"""Stores at Kinetics scale (issue 25): open, list, describe, verify and write a synthetic store of N videos.

    python -m bench scale                          N = 1,000 / 10,000 / 100,000
    GLIMPSE_SCALE_MAX=650000 python -m bench scale also 650,000 (650,000 video files)

Each store is made by :func:`glimpse.store.create_store` (the real manifest), one template video written by the real
:class:`StoreWriter`, then a bench-only bulk path that copies the template's file under every other key (the same
format: one zip file per video) and writes the index snapshot as a compaction would. All but
:data:`PENDING_LEFT` videos are done; the writer times write those.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from glimpse.store import StoreWriter, VideoRecord, create_store, open_store
from glimpse.store.catalog import list_stores, store_info
from glimpse.store.index import INDEX_STATUSES, IndexState, video_bytes, write_snapshot
from glimpse.store.layout import VIDEOS_GROUP, video_key
from glimpse.store.verify import check_video
from glimpse.store.video_files import video_path

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (200, 2_000)
PENDING_LEFT = 40  # videos left pending for the writer's timing
FRAMES = 4
SAMPLE = 100  # videos verified


def records(n: int) -> list[VideoRecord]:
    return [VideoRecord(id=f"class{i % 700:03d}/clip_{i:07d}", path=f"/data/k700/class{i % 700:03d}/clip_{i:07d}.mp4",
                        labels=(i % 700,), splits={"1": ("train", "test", "unused")[i % 3]}) for i in range(n)]


def build(path: Path, n: int) -> list[str]:
    """A store of ``n`` videos at ``path``, all done but the last PENDING_LEFT; returns the keys in manifest order."""
    store = create_store(path, dataset="synthetic-k700", classes=[f"c{i}" for i in range(700)], records=records(n),
                         config={"n": n}, streams={"rgb": {"frame_shape": [4, 2, 2]}})
    keys = [video_key(r.id) for r in records(n)]  # manifest order
    rng = np.random.default_rng(0)
    data = rng.standard_normal((FRAMES, 4, 2, 2)).astype(np.float16)
    result = {"n_frames": FRAMES, "frame_indices": list(range(FRAMES)), "timestamps": [0.04 * f for f in range(FRAMES)]}
    store.write_video(keys[0], {"rgb": data}, result)
    template = Path(video_path(path, keys[0])).read_bytes()  # one file a video (store.video_files)
    done = n - PENDING_LEFT

    def copy(key: str) -> None:  # the bulk path: the template's file under ``key``
        with open(video_path(path, key), "wb") as f:
            f.write(template)

    with ThreadPoolExecutor(8) as pool:  # file system calls release the GIL
        list(pool.map(copy, keys[1:done], chunksize=256))
    state = IndexState.empty(n)
    state.status[:done] = INDEX_STATUSES.index("done")
    state.n_frames[:done] = FRAMES
    state.nbytes[:done] = video_bytes(path, keys[0])
    store.index.close()
    write_snapshot(path, state)
    os.sync()  # the bulk copy's dirty pages (GBs at 650,000) written out: each write_video fsyncs, would wait on them
    return keys


def best(fn, repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs of ``fn``, seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(root: Path, n: int, keys: list[str]) -> dict[str, float]:
    path = root / "store"
    out: dict[str, float] = {"open": best(lambda: open_store(path))}
    out["videos"] = best(lambda: open_store(path).videos, 2)
    out["ls"] = best(lambda: list_stores(root), 2)
    out["info"] = best(lambda: store_info(path), 1)
    store = open_store(path)
    entries = store.videos
    sample = np.random.default_rng(1).choice(n - PENDING_LEFT, SAMPLE, replace=False)
    out["verify"] = best(lambda: [check_video(store, store.video(entries[i].id)) for i in sample], 1)
    out["start"] = best(lambda: StoreWriter(path), 5)
    writer = StoreWriter(path)
    data = {"rgb": np.ones((FRAMES, 4, 2, 2), np.float16)}
    result = {"n_frames": FRAMES, "frame_indices": list(range(FRAMES)), "timestamps": [0.0] * FRAMES}
    writes = []
    for key in keys[n - PENDING_LEFT:]:
        start = time.perf_counter()
        writer.write_video(key, data, result)
        writes.append(time.perf_counter() - start)
    out["write"] = statistics.median(writes)
    folder = path / VIDEOS_GROUP / keys[0]  # the old layout's folder, which must not exist
    out["files"] = int(Path(video_path(path, keys[0])).is_file()) + sum(len(f) for _d, _s, f in os.walk(folder))
    return out


def run(quick: bool = False) -> str:
    """Markdown section: the growth table of a store's open, listing, description, verify and writes."""
    sizes: list[int] = list(QUICK_SIZES if quick else SIZES)
    largest = int(os.environ.get("GLIMPSE_SCALE_MAX", "0"))
    if largest and not quick:
        sizes.append(largest)
    rows, build_s, writes = [], {}, []
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
        try:
            start = time.perf_counter()
            keys = build(tmp / "store", n)
            build_s[n] = time.perf_counter() - start
            m = measure(tmp, n, keys)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append(f"| {n:,} | {m['open']:.3f} s | {m['videos']:.2f} s | {m['ls']:.2f} s | {m['info']:.2f} s | "
                    f"{m['verify'] / SAMPLE * 1e3:.1f} ms | {m['start'] * 1e3:.1f} ms | {m['write'] * 1e3:.1f} ms | "
                    f"{m['files']:.0f} |")
        writes.append(m["write"])
        print(rows[-1], flush=True)
    first, first_write, last_write = sizes[0], writes[0], writes[-1]
    return "\n".join([
        "## Stores at scale: open, list, describe, verify and write at N videos",
        "",
        f"A synthetic store of N videos of {FRAMES} frames of 4 x 2 x 2 (the manifest by `create_store`, one video by "
        "the real writer, the rest copies of its file, the index snapshot written as a compaction would), "
        f"{PENDING_LEFT} left pending. `open` is `open_store`, `videos` a fresh store's `Store.videos` (manifest "
        "and index read), `ls` `list_stores` of a root holding it, `info` `store_info`, `verify` one video's checks "
        f"(of {SAMPLE} drawn), `start` `StoreWriter(path)`, `write` the median `write_video` of the "
        f"{PENDING_LEFT} pending ones, `files` the files of one video (one zip file "
        "holding its group, array metadata and chunks). Building, then os.sync (so that no timed write waits on the "
        "bulk copy's dirty pages), took "
        + ", ".join(f"{s:.0f} s at {n:,}" for n, s in build_s.items()) + ".",
        "",
        "| videos | open | videos | ls | info | verify / video | writer start | write / video | files / video |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Sizes run: {', '.join(f'{n:,}' for n in sizes)} (GLIMPSE_SCALE_MAX=650000 adds 650,000); the write time "
        f"at the largest is {rows and last_write / first_write:.2f}x that at {first:,}.",
    ])
