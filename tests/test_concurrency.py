"""Several extractions on one store at once, one of them killed: nothing is corrupted or lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from test_extract import REPO, TINY_OPTS, assert_same_stores, cli_args

from extract.cli import extract_dataset
from store import open_store
from store.claims import claim_video, is_claimed
from store.verify import verify_store


def test_claims_are_exclusive_and_die_with_their_holder(tmp_path):
    with claim_video(tmp_path, "v1") as first:
        assert first and is_claimed(tmp_path, "v1")
        with claim_video(tmp_path, "v1") as second:
            assert not second  # flock is per open file: a second claim, even in this process, is refused
    assert not is_claimed(tmp_path, "v1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from store.claims import claim_video\n"
         "with claim_video(sys.argv[1], 'v2'):\n    print('held', flush=True); time.sleep(60)", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert is_claimed(tmp_path, "v2")
    holder.kill()
    holder.wait()
    assert not is_claimed(tmp_path, "v2")  # the kernel dropped the claim with its holder


def test_two_runs_at_once_one_killed_then_a_third_finish_the_store(tiny_synthetic, dask_client, tmp_path):
    reference = tmp_path / "reference"
    extract_dataset("synthetic", str(tiny_synthetic), str(reference), client=dask_client, workers=1, **TINY_OPTS)
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
    third = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert verify_store(out) == []
    assert_same_stores(reference, out)
