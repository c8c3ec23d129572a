"""Several extractions on one store at once, one of them killed, and a trainer reading the store while an
extraction writes it: nothing is corrupted, lost, done twice, or read before it is finished."""

from __future__ import annotations

import csv
import errno
import fcntl
import logging
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from extraction import HEAVY_OPTS, extract
from reliability_log import record
from test_extract import REPO, TINY_OPTS, assert_same_stores, cli_args
from test_reliability import done_count, finish_like_reference

from glimpse.extract.api import resolve_claims
from glimpse.store import open_store
from glimpse.store.claims import ClaimsUnsupported, claim_video, claims_on, hold_claims_on, is_claimed
from glimpse.store.layout import video_key
from glimpse.store.verify import verify_store
from glimpse.train.loop import train_model
from glimpse.train.run import RunDir

#: the last line an extraction prints: what this run did, what it found done, what other runs did meanwhile
SUMMARY = re.compile(r"(\d+) videos extracted, (\d+) already done, (\d+) done by another run, (\d+) failed")


@pytest.fixture(scope="module")
def reference(tiny_synthetic, dask_client, tmp_path_factory) -> Path:
    """The tiny dataset extracted by one uninterrupted run (workers=1: the CLI runs' torch thread count)."""
    out = tmp_path_factory.mktemp("reference") / "tiny"
    extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, workers=1, **TINY_OPTS)
    return out


def test_claims_are_exclusive_and_die_with_their_holder(tmp_path):
    with claim_video(tmp_path, "v1") as first:
        assert first and is_claimed(tmp_path, "v1")
        with claim_video(tmp_path, "v1") as second:
            assert not second  # flock is per open file: a second claim, even in this process, is refused
    assert not is_claimed(tmp_path, "v1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from glimpse.store.claims import claim_video\n"
         "with claim_video(sys.argv[1], 'v2'):\n    print('held', flush=True); time.sleep(60)", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert is_claimed(tmp_path, "v2")
    holder.kill()
    holder.wait()
    assert not is_claimed(tmp_path, "v2")  # the kernel dropped the claim with its holder


def claim_semaphores(dask_scheduler) -> list[str]:
    """On the scheduler: the names of the semaphores it keeps (glimpse's claims among them)."""
    return sorted(dask_scheduler.extensions["semaphores"].max_leases)


def test_a_scheduler_claim_is_refused_while_held_and_granted_after_release(dask_client, tmp_path):
    with claims_on(dask_client):
        with claim_video(tmp_path, "v1") as first:
            assert first and is_claimed(tmp_path, "v1")
            with claim_video(tmp_path, "v1") as second:
                assert not second
            assert any(str(tmp_path) in name for name in dask_client.run_on_scheduler(claim_semaphores))
        assert not is_claimed(tmp_path, "v1")
        with claim_video(tmp_path, "v1") as again:
            assert again
    assert not any(str(tmp_path) in name for name in dask_client.run_on_scheduler(claim_semaphores))  # closed
    assert not (tmp_path / ".glimpse-claims").exists()  # nothing on disk


def hold_claim_in_worker(store: str, key: str) -> bool:
    """A Dask task: claim ``key`` on the scheduler, say so in a file, and hold it until the worker is killed."""
    from distributed import get_worker

    hold_claims_on(get_worker())
    with claim_video(store, key) as held:
        (Path(store) / f"{key}.held").write_text(str(held))
        time.sleep(300)
    return held


@pytest.mark.slow
def test_a_scheduler_claim_of_a_killed_worker_is_taken_over_after_its_lease_timeout(tmp_path):
    import dask.config
    from distributed import Client, LocalCluster

    short = {"distributed.scheduler.locks.lease-timeout": "2s",
             "distributed.scheduler.locks.lease-validation-interval": "0.5s"}
    with dask.config.set(short), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                              dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client, claims_on(client):
        holder = client.submit(hold_claim_in_worker, str(tmp_path), "v1", pure=False)
        for _ in range(600):
            if (tmp_path / "v1.held").exists():
                break
            time.sleep(0.05)
        assert (tmp_path / "v1.held").read_text() == "True"
        with claim_video(tmp_path, "v1") as taken:
            assert not taken  # the worker holds it
        (pid,) = cast(dict, client.run(os.getpid)).values()
        client.cancel(holder)  # not run again on the restarted worker
        os.kill(pid, signal.SIGKILL)
        tries = 0
        while is_claimed(tmp_path, "v1") and tries < 600:  # its lease expires: 2 s after its last refresh
            tries += 1
            time.sleep(0.05)
        with claim_video(tmp_path, "v1") as taken:
            assert taken, "the killed worker's claim was never released"


def no_locks(fd, operation):
    """fcntl.flock on a file system mounted without flock (Lustre noflock, some NFS)."""
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def test_auto_claims_fall_back_to_the_scheduler_where_flock_is_not_supported(tmp_path, monkeypatch, caplog):
    store = tmp_path / "store"
    assert resolve_claims("auto", str(store)) == "flock"
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.INFO, logger="extract"):
        assert resolve_claims("auto", str(store)) == "scheduler"
    assert [r.message for r in caplog.records if "claims" in r.message] == [
        f"claims: flock on {tmp_path}: {os.strerror(errno.ENOLCK)}, so videos are claimed on the Dask scheduler: "
        "only runs through this scheduler are kept apart (share one with --scheduler)"]
    assert not store.exists()  # probed beside it: a store not yet made is left untouched
    assert resolve_claims("flock", str(store)) == "flock"  # asked for: its claims then fail in one line
    unsupported = r"\.glimpse-claims: this file system does not support flock"
    with pytest.raises(ClaimsUnsupported, match=unsupported), claim_video(tmp_path / "maintained", "v1"):
        pass


@pytest.mark.slow
def test_two_runs_claiming_on_one_scheduler_extract_each_video_once(tiny_synthetic, reference, dask_client, tmp_path,
                                                                   monkeypatch):
    """One run with --claims scheduler, one with auto where flock fails: both claim on the scheduler they share."""
    out = tmp_path / "shared"
    ids = [v.id for v in open_store(reference).videos]
    real_flock = fcntl.flock
    monkeypatch.setattr(fcntl, "flock", no_locks)  # this process's: the second run's auto must choose the scheduler
    with ThreadPoolExecutor(2) as pool:
        with claims_on(dask_client), claim_video(out, video_key(ids[0])):
            # this test holds the first video: both runs meet on it, and exactly one of them must take it over
            runs = [pool.submit(extract, "synthetic", str(tiny_synthetic), str(out), client=dask_client, workers=1,
                                claims=claims, **TINY_OPTS) for claims in ("scheduler", "auto")]
            for _ in range(1200):
                if done_count(out) == len(ids) - 1:
                    break
                time.sleep(0.05)
            assert not any(run.done() for run in runs)  # both wait for the held video
        summaries = [run.result(timeout=300) for run in runs]
    monkeypatch.setattr(fcntl, "flock", real_flock)
    for summary in summaries:
        assert not summary.failed and summary.done + summary.skipped + summary.by_others == len(ids), summary
    assert sum(s.done for s in summaries) == len(ids), [s.done for s in summaries]  # none twice, none missed
    assert verify_store(out) == []
    assert_same_stores(reference, out)
    assert list((out / ".glimpse-claims").iterdir()) == []  # no lock file: workers and clients claimed on Dask
    assert not any(str(out) in name for name in dask_client.run_on_scheduler(claim_semaphores)
                   if name.startswith("glimpse-claim:"))


@pytest.mark.slow
@pytest.mark.reliability
def test_two_runs_at_once_one_killed_then_a_third_finish_the_store(tiny_synthetic, reference, tmp_path):
    expected = {v.id: open_store(reference).read(v.id, "rgb") for v in open_store(reference).videos}
    out = tmp_path / "shared"
    args = cli_args(tiny_synthetic, out, workers=1)
    runs = [subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    seen_done, killed = set(), False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and runs[1].poll() is None:
        if (out / "zarr.json").exists():
            for video in open_store(out).videos:  # a reader during extraction sees only finished videos
                if video.status == "done":
                    np.testing.assert_array_equal(open_store(out).read(video.id, "rgb"), expected[video.id])
                    seen_done.add(video.id)
        if not killed and len(seen_done) >= 2:
            os.killpg(runs[0].pid, signal.SIGKILL)  # halfway: the survivor must take over its videos
            killed = True
        time.sleep(0.05)
    assert killed, "the store was finished before a run could be killed"
    survivor = runs[1]
    survivor.wait(timeout=240)
    runs[0].wait()
    assert survivor.returncode == 0, survivor.stderr.read()[-3000:]
    finish_like_reference(args, out, reference)  # the third run
    record("concurrency", "two extractions at once on one store, one SIGKILLed (client and workers) halfway, "
           "then a third run", f"a reader saw {len(seen_done)} videos done meanwhile, each equal to the reference; "
           "the survivor took over, verify passes, store identical to an uninterrupted run",
           crashes_survived=1, videos_lost=0)


@pytest.mark.slow
@pytest.mark.reliability
def test_three_runs_started_together_extract_every_video_exactly_once(heavy, heavy_reference, tmp_path):
    # the heavy dataset: on the tiny one, the run whose worker started first sometimes finished all 12 videos before
    # the others had started theirs (videos extracted per run [12, 0, 0]), so the runs never met
    reference = heavy_reference
    out = tmp_path / "shared"
    args = cli_args(heavy, out, workers=1, **HEAVY_OPTS)
    runs = [subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(3)]
    try:
        outputs = [run.communicate(timeout=300) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    n_videos = len(open_store(reference).videos)
    extracted = []
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr[-3000:]
        summary = SUMMARY.search(stdout)
        assert summary, stdout
        done, already, by_others, failed = map(int, summary.groups())
        assert failed == 0 and done + already + by_others == n_videos, stdout
        extracted.append(done)
    assert sum(extracted) == n_videos, f"videos extracted per run: {extracted}"  # none twice, none missed
    assert sum(n > 0 for n in extracted) >= 2, f"the runs did not overlap: videos extracted per run {extracted}"
    assert verify_store(out) == []
    assert_same_stores(reference, out)
    record("concurrency", "three extractions started together on one store (three CLI processes, each with its "
           "own LocalCluster)", f"videos extracted per run {extracted}: each of the {n_videos} exactly once; verify "
           "passes, store identical to an uninterrupted run", videos_lost=0)


def split_ids(store: Path, split: str = "1") -> tuple[set[str], set[str], int]:
    """Ids of the split's train and test videos: those done now, all of them; and how many train videos are done."""
    if not (store / "zarr.json").exists():
        return set(), set(), 0
    entries = [v for v in open_store(store).videos if v.splits.get(split) in ("train", "test")]
    done = [v for v in entries if v.status == "done"]
    return {v.id for v in done}, {v.id for v in entries}, sum(v.splits[split] == "train" for v in done)


@pytest.mark.slow
@pytest.mark.reliability
def test_a_trainer_reads_only_finished_videos_while_an_extraction_writes_the_store(heavy, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.Popen(cli_args(heavy, out, workers=1, **HEAVY_OPTS), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = []  # (done before the run started, run dir, done after it ended)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the extraction did not finish"
            before, every, train_done = split_ids(out)
            if train_done < 2 or sum(len(b) < len(every) for b, *_ in runs) >= 3:  # wait, or enough runs made
                time.sleep(0.05)
                continue
            run = tmp_path / f"run{len(runs)}"
            train_model(out, "avgpool_lstm", run, epochs=1, batch_size=4, workers=0, progress=False,
                        model_args={"hidden": 8})
            runs.append((before, run, split_ids(out)[0]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    done, every, _ = split_ids(out)
    assert done == every and verify_store(out) == []
    store = open_store(out)
    partial = 0
    for before, run, after in runs:
        data = RunDir(run).config()["data"]
        used = data["train"] + data["val"] + data["test"]
        assert len(before) <= used <= len(after) and used + data["skipped_not_done"] == len(every), data
        with open(RunDir(run).file("test_predictions.csv")) as f:
            tested = [row["video"] for row in csv.DictReader(f)]
        assert set(tested) <= after and len(tested) == data["test"]
        for video_id in tested:  # each one read by the trainer: a whole, finite cube now
            assert np.isfinite(store.read(video_id, "rgb")).all()
        if data["skipped_not_done"]:
            partial += 1
            assert any(f"{data['skipped_not_done']} videos of split 1 are not done in the store: skipped" in e
                       for e in RunDir(run).events())
    assert partial >= 2, f"only {partial} of {len(runs)} runs trained while videos were still pending"
    record("concurrency", "a trainer opening the store and training one epoch, again and again, while an "
           "extraction writes it", f"{partial} runs trained on a partly written store, each only on videos done "
           f"when it started (it logged how many it skipped as unfinished); final store verifies", videos_lost=0)
