"""Crashes and hostile files across the extraction stage and the store: nothing is lost, nothing runs.

The crash loops are marked slow; `make test` (and so .ci/run) runs them too.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from extraction import HEAVY_OPTS, extract
from reliability_log import record
from store_files import edit_entry
from test_extract import REPO, assert_same_stores, cli_args

from glimpse.store import StoreError, open_store
from glimpse.store.layout import video_key
from glimpse.store.verify import verify_store

#: Whole extractions SIGKILLed at random moments, one after the other (each kill lands in another phase of a run).
KILLS = 5


def finish_like_reference(args: list[str], out: Path, reference: Path) -> None:
    """Run the extraction command ``args`` to the end on ``out``: it must succeed, and the store must verify
    and equal the uninterrupted ``reference``."""
    final = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert verify_store(out) == []
    assert_same_stores(reference, out)


def done_count(store: Path) -> int:
    if not (store / "zarr.json").exists():
        return 0
    return sum(v.status == "done" for v in open_store(store).videos)


@pytest.mark.slow
@pytest.mark.reliability
def test_sigkills_at_random_moments_then_resume_give_the_uninterrupted_store(heavy, heavy_reference, tmp_path):
    out = tmp_path / "killed"
    args = cli_args(heavy, out, workers=1, **HEAVY_OPTS)
    rng = np.random.default_rng(2026)
    kills, done_after = 0, []
    for _ in range(KILLS):
        proc = subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        before = done_count(out)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and done_count(out) <= before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))  # a seeded random moment once this run has finished a video
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        done_after.append(done_count(out))
    assert kills >= KILLS - 1, f"only {kills} of {KILLS} runs were still working when killed: {done_after}"
    assert 0 < done_after[0] < done_after[kills - 1] < len(open_store(out).videos), done_after  # killed mid-way
    finish_like_reference(args, out, heavy_reference)
    record("crash", f"SIGKILL of a whole extraction (client and its workers) at {KILLS} seeded random moments, "
           "then the same command", f"{kills} kills; videos done after each: {done_after}; final store "
           "identical to an uninterrupted run, verify passes", crashes_survived=kills, videos_lost=0)


@pytest.mark.slow
@pytest.mark.reliability
def test_a_dask_worker_killed_mid_extraction_loses_nothing(heavy, heavy_reference, tmp_path):
    from distributed import Client, LocalCluster

    out = tmp_path / "s"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)  # worker address -> pid
        result: list = []
        runner = threading.Thread(target=lambda: result.append(
            extract("synthetic", str(heavy), str(out), client=client, workers=1, **HEAVY_OPTS)))
        runner.start()
        deadline = time.monotonic() + 120
        while done_count(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)  # its nanny restarts it; its task runs again elsewhere
        done_at_kill = done_count(out)
        runner.join(timeout=300)
    summary = result[0]
    assert done_at_kill < len(open_store(out).videos), "the worker was killed after the work was over"
    assert not summary.failed, summary.report()
    assert verify_store(out) == []
    assert_same_stores(heavy_reference, out)
    record("crash", "SIGKILL of one of two Dask workers during extraction",
           f"killed with {done_at_kill}/24 done; its task ran again elsewhere; all 24 done once, store identical "
           "to an uninterrupted run", crashes_survived=1, videos_lost=0)


class Boom:
    """Unpickling this would run code: it must never be unpickled."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/glimpse-hostile-marker"),))


@pytest.mark.reliability
def test_hostile_store_metadata_is_refused_as_data_and_never_run(tiny_synthetic, dask_client, tmp_path):
    marker = Path("/tmp/glimpse-hostile-marker")
    marker.unlink(missing_ok=True)
    out = tmp_path / "s"
    extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, backbone="googlenet",
                    weights="none", size=64, frames=6, batch_size=8)
    victim = open_store(out).videos[2]
    edit_entry(out, video_key(victim.id), "zarr.json", lambda _: pickle.dumps(Boom()))
    store = open_store(out)  # its listing comes from the index; reading a video reads its metadata
    read = {v.id: store.video(v.id) for v in store.videos}
    assert read[victim.id].status == "unreadable" and "zarr.json" in (read[victim.id].error or "")
    assert sum(v.status == "done" for v in read.values()) == 11  # the others still read
    bad = dict(verify_store(out))
    assert list(bad) == [victim.id]
    root = out / "zarr.json"
    root.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(StoreError, match="not a glimpse store"):
        open_store(out)
    assert not marker.exists(), "a pickle in store metadata was executed"
    record("hostile file", "a pickle that would run code, written as a video's and as the store's zarr.json",
           "video: reported unreadable and failed by verify, the other 11 read; store: refused with a clear "
           "error; nothing executed", hostile_files_refused=2)
