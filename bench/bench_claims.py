"""What a claim costs per video, side by side in one run: claim and release of a video (store.claims.claim_video) with
flock on the local disk, and with a lease on the Dask scheduler of a LocalCluster on loopback, claimed from the
client's process and from a worker's (what an extraction task does), one key after the other.
"""

from __future__ import annotations

import logging
import tempfile
import time

from glimpse.store.claims import claim_video, claims_on, hold_claims_on

FULL, QUICK = 400, 20


def claim_loop(store: str, n: int, prefix: str) -> float:
    """Seconds per claim and release of ``n`` keys in turn, with this thread's or this process's backend."""
    start = time.perf_counter()
    for i in range(n):
        with claim_video(store, f"{prefix}{i}") as held:
            assert held
    return (time.perf_counter() - start) / n


def worker_loop(store: str, n: int) -> float:
    """In a Dask worker: :func:`claim_loop` on the scheduler, as an extraction task claims."""
    from distributed import get_worker

    hold_claims_on(get_worker())
    try:
        return claim_loop(store, n, "worker-")
    finally:
        hold_claims_on(None)


def run(quick: bool = False) -> str:
    from distributed import Client, LocalCluster

    n = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as store, LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        claim_loop(store, 5, "warm-")
        with claims_on(client):
            claim_loop(store, 5, "warm-")
        rows = {"flock, local disk": claim_loop(store, n, "flock-")}
        with claims_on(client):
            rows["scheduler, from the client"] = claim_loop(store, n, "client-")
        rows["scheduler, from a worker"] = client.submit(worker_loop, store, n, pure=False).result()
    lines = ["## claims", "", f"Claim and release of {n} videos in turn (store.claims.claim_video): milliseconds "
             "per video. A scheduler claim is 5 round trips to the scheduler (register, acquire, release, count, "
             "close), on loopback here.", "", "| claims | ms per video |", "|---|---|"]
    lines += [f"| {name} | {seconds * 1e3:.3f} |" for name, seconds in rows.items()]
    return "\n".join(lines) + "\n"
