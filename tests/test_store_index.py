"""Schema 3's manifest and video index (issue 25): writers that never read the manifest, an index that live writers,
killed writers and readers keep consistent with the videos' attributes, and the upgrade of a schema 2 store."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from old_stores import as_schema_2

from glimpse.store import StoreError, StoreWriter, VideoRecord, create_store, open_store
from glimpse.store.cli import main as store_main
from glimpse.store.index import INDEX_DIR, LOG_SUFFIX
from glimpse.store.layout import video_key
from glimpse.store.maintenance import compact_index
from glimpse.store.verify import run_verify

REPO = Path(__file__).resolve().parents[1]
N = 24


def records(n: int = N) -> list[VideoRecord]:
    return [VideoRecord(id=f"c{i % 3}/v{i:03d}", path=f"/v/{i}.avi", labels=(i % 3,) if i % 5 else (i % 3, 0),
                        splits={"1": "train" if i % 2 else "test", "2": "unused"}, group=f"g{i % 4}" if i % 7 else None,
                        fingerprint=None if i % 2 else f"fp{i}") for i in range(n)]


def new_store(path: Path, n: int = N) -> Path:
    create_store(path, dataset="toy", classes=["a", "b", "c"], records=records(n), config={"n": n},
                 streams={"rgb": {"frame_shape": [2, 1, 1]}})
    return path


def arrays(i: int, frames: int = 3) -> dict[str, np.ndarray]:
    return {"rgb": np.random.default_rng(i).standard_normal((frames, 2, 1, 1)).astype(np.float16)}


def result(frames: int = 3) -> dict:
    return {"n_frames": frames, "frame_indices": list(range(frames)), "timestamps": [0.1 * f for f in range(frames)]}


WRITER = textwrap.dedent("""
    import os, sys, time, numpy as np
    from glimpse.store import StoreWriter
    from glimpse.store.claims import claim_video
    from glimpse.store.layout import video_key
    path, first, stop, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    writer = StoreWriter(path)
    print("ready", flush=True)
    while not os.path.exists(path + ".go"):  # every writer starts at once
        time.sleep(0.01)
    for i in range(first, stop, step):
        key = video_key(f"c{i % 3}/v{i:03d}")
        with claim_video(path, key) as held:
            if not held or writer.status(key) != "pending":
                continue
            frames = 2 + i % 3
            data = np.random.default_rng(i).standard_normal((frames, 2, 1, 1)).astype(np.float16)
            res = {"n_frames": frames, "frame_indices": list(range(frames)), "timestamps": [0.0] * frames}
            if i % 6 == 5:
                writer.write_failure(key, f"broken {i}")
            else:
                writer.write_video(key, {"rgb": data}, res)
        print(key, flush=True)
    """)


def writer_process(path: Path, first: int, stop: int, step: int) -> subprocess.Popen:
    """A process writing videos first, first + step, ... (before stop) that it can claim and are pending; it prints
    each one's key once written."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first), str(stop), str(step)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, text=True)


def test_the_manifest_round_trips_and_a_writer_never_reads_it(tmp_path):
    path = new_store(tmp_path / "s")
    store = open_store(path)
    assert [row.to_dict() for row in store.manifest] == [
        {"id": r.id, "key": video_key(r.id), "path": r.path, "labels": list(r.labels), "splits": dict(r.splits),
         "group": r.group, **({"fingerprint": r.fingerprint} if r.fingerprint else {})} for r in records()]
    assert "videos" not in json.loads((path / "zarr.json").read_text())["attributes"]["glimpse"]
    (path / "manifest").rename(tmp_path / "away")  # a writer that read the manifest would fail now
    writer = StoreWriter(path)
    writer.write_video(video_key("c0/v000"), arrays(0), result())
    (tmp_path / "away").rename(path / "manifest")
    assert open_store(path).video("c0/v000").status == "done"


def test_videos_from_the_index_equal_the_attributes_and_pickle_whole(tmp_path):
    path = new_store(tmp_path / "s")
    writer = StoreWriter(path)
    writer.write_video(video_key("c1/v001"), arrays(1, 4), result(4))
    writer.write_failure(video_key("c2/v002"), "no frames")
    store = open_store(path)
    videos = store.videos
    assert [v.status for v in videos[:4]] == ["pending", "done", "failed", "pending"]
    assert videos == [store.video(r.id) for r in records()]  # index entries, the rest read lazily, equal the truth
    assert videos[1].checksums == store.video("c1/v001").checksums and videos[2].error == "no frames"
    assert pickle.loads(pickle.dumps(videos[1])) == store.video("c1/v001")
    assert run_verify(path).ok


def test_entries_made_a_column_at_a_time_equal_the_videos_read_one_by_one(tmp_path):
    recs = [VideoRecord(id=f"v{i}", path=f"/v/{i}.avi", labels=(i % 3,) if i % 2 else (0, 2),
                        splits={"1": "train", **({"2": ("test", "unused")[i % 2]} if i % 3 else {})},
                        group="g" if i % 4 else None) for i in range(9)]
    path = tmp_path / "s"
    create_store(path, dataset="toy", classes=["a", "b", "c"], records=recs, config={}, streams={"rgb": {}})
    writer = StoreWriter(path)
    for i in (1, 2):
        writer.write_video(video_key(f"v{i}"), arrays(i), result())
    writer.index.append(video_key("v2"), "writing")  # as a writer killed mid-way logs it: its attributes say done
    writer.write_failure(video_key("v3"), "no frames")
    store = open_store(path)
    videos = store.videos
    assert [v.status for v in videos[:5]] == ["pending", "done", "done", "failed", "pending"]
    assert videos == [store.video(r.id) for r in recs] and videos[3].error == "no frames"
    assert [(v.labels, dict(v.splits), v.group) for v in videos] == [(r.labels, r.splits, r.group) for r in recs]
    assert [v.row for v in videos] == list(store.manifest)
    assert pickle.loads(pickle.dumps(videos[0])) == store.video("v0") and videos[0].frame_indices == ()
    splits = videos[0].splits
    assert isinstance(splits, dict)  # a plain dict, as VideoEntry.of makes it: it pickles and dumps to JSON
    splits["1"] = "test"  # v0 and v3 have the same roles: each entry and row still has its own mapping
    assert videos[3].splits["1"] == store.manifest[0].splits["1"] == store.videos[0].splits["1"] == "train"


def test_two_writers_and_a_reader_keep_the_index_consistent(tmp_path):
    path = new_store(tmp_path / "s")
    writers = [writer_process(path, 0, N, 1), writer_process(path, N - 1, -1, -1)]  # from both ends: claims decide
    assert [w.stdout.readline() for w in writers] == ["ready\n"] * 2  # type: ignore[union-attr]
    Path(f"{path}.go").touch()
    seen_done: set[str] = set()
    while any(w.poll() is None for w in writers):
        for entry in open_store(path).videos:  # the index never calls a video done that its attributes do not
            if entry.status == "done":
                assert open_store(path).video(entry.id).status == "done"
                seen_done.add(entry.id)
    assert all(w.wait() == 0 for w in writers)
    written = [line.split()[0] for w in writers for line in w.stdout.read().splitlines()]  # type: ignore[union-attr]
    assert sorted(written) == sorted(video_key(r.id) for r in records())  # every video by exactly one writer
    verification = run_verify(path)
    assert verification.ok, verification.report()
    assert verification.checked == N - sum(i % 6 == 5 for i in range(N))
    assert [p for p in (path / INDEX_DIR).iterdir() if p.name.endswith(LOG_SUFFIX)]
    state = compact_index(path)  # the writers are gone: their logs folded into the snapshot and removed
    assert not [p for p in (path / INDEX_DIR).iterdir() if p.name.endswith(LOG_SUFFIX)]
    assert state.statuses() == [open_store(path).video(r.id).status for r in records()]
    assert run_verify(path).ok


def test_a_sigkilled_writer_loses_no_finished_video_from_the_index(tmp_path):
    n = 400
    path = new_store(tmp_path / "s", n)
    writer = writer_process(path, 0, n, 1)
    assert writer.stdout.readline() == "ready\n"  # type: ignore[union-attr]
    Path(f"{path}.go").touch()
    finished = []
    while len(finished) < 30:
        finished.append(writer.stdout.readline().split()[0])  # type: ignore[union-attr]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = open_store(path)
    statuses = dict(zip((r.key for r in store.manifest), store.index().statuses(), strict=True))
    assert all(statuses[key] in ("done", "failed") for key in finished)  # the index alone, no attributes read
    assert run_verify(path).ok
    compact_index(path)
    after = {v.key: v.status for v in open_store(path).videos}
    assert all(after[key] in ("done", "failed") for key in finished)
    assert "writing" not in set(open_store(path).index().statuses())  # a video left mid-way is settled


def test_verify_finds_an_index_that_disagrees_and_reindex_rebuilds_it(tmp_path):
    path = new_store(tmp_path / "s")
    writer = StoreWriter(path)
    for i in range(3):
        writer.write_video(video_key(records()[i].id), arrays(i), result())
    writer.index.append(video_key(records()[3].id), "done", 3)  # a line no video backs
    assert [vid for vid, _ in run_verify(path).bad] == [records()[3].id]
    assert "reindex" in run_verify(path).report()
    out = CliRunner().invoke(store_main, ["reindex", str(path)])
    assert out.exit_code == 0 and "3 done" in out.output
    assert run_verify(path).ok


def test_a_schema_2_store_is_refused_then_upgraded_with_identical_values(tmp_path):
    path = new_store(tmp_path / "s")
    writer = StoreWriter(path)
    for i in range(0, N, 2):
        writer.write_video(video_key(records()[i].id), arrays(i, 2 + i % 4), result(2 + i % 4))
    writer.write_failure(video_key(records()[1].id), "decoder crashed")
    before = open_store(path)
    entries, values = before.videos, {e.id: before.read(e.id) for e in before.videos if e.status == "done"}
    as_schema_2(path)
    with pytest.raises(StoreError, match=f"schema version 2, .*'python -m glimpse.store upgrade {path}'"):
        open_store(path)
    out = CliRunner().invoke(store_main, ["upgrade", str(path)])
    assert out.exit_code == 0 and "schema version 3 (was 2)" in out.output
    after = open_store(path)
    assert after.videos == entries  # manifest rows, statuses, checksums, results
    assert all(np.array_equal(after.read(vid), data) for vid, data in values.items())
    assert run_verify(path).ok
