"""The one Dask cluster set-up of the stages (extraction, training sweeps): an existing scheduler, or a local cluster.

On a CPU-only machine: a LocalCluster of ``workers`` processes, one thread each. With ``gpus``: one
worker per device, each pinned to it (``CUDA_VISIBLE_DEVICES`` set in that worker's nanny, so its
``"cuda"`` is its own GPU) and declaring the Dask resource ``{"GPU": 1}``; tasks that ask for it run
only on such workers. An existing cluster (``--scheduler`` or DASK_SCHEDULER_ADDRESS) is used as it
is: its GPU workers are those that declare the resource (``dask worker --resources GPU=1``).

``--gpus`` on a machine where torch sees no CUDA device is a clear one-line error
(:class:`ClusterError`), not a silent fall back to the CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from glimpse.errors import OptionError

#: The Dask resource GPU workers declare and GPU tasks ask for.
GPU = "GPU"


class ClusterError(OptionError):
    """A cluster that cannot be set up as asked (e.g. more GPUs than are visible); the message names the option and
    says why (a usage error: exit status 2)."""


@dataclass(frozen=True)
class ClusterPlan:
    """The local workers to start: ``devices`` holds each worker's GPU index (empty: CPU workers)."""

    workers: int
    threads: int  # torch threads per task, so that the workers together use the machine's cores once
    devices: tuple[int, ...] = ()

    def worker_specs(self) -> dict[int, dict[str, Any]]:
        """SpecCluster worker specs: one nanny per device, pinned to it, declaring one GPU resource."""
        from distributed import Nanny

        return {
            i: {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}, "silence_logs": logging.ERROR,
                                          "env": {"CUDA_VISIBLE_DEVICES": str(device)}}}
            for i, device in enumerate(self.devices)
        }


def parse_gpus(value: str | int | None) -> int | None:
    """``--gpus`` as given: None (no GPUs), a count, or ``"all"`` (-1: every visible device)."""
    if value is None or value == "":
        return None
    if str(value).lower() == "all":
        return -1
    try:
        count = int(value)
    except ValueError:
        raise ClusterError(f"--gpus {value!r}: expected a number of GPUs or 'all'") from None
    if count < 0:
        raise ClusterError(f"--gpus {value!r}: expected a number of GPUs >= 0 or 'all'")
    return count or None


def plan_cluster(workers: int | None, gpus: int | None, cores: int, visible: int, default_workers: int) -> ClusterPlan:
    """The local cluster for ``workers`` (None: ``default_workers``) or ``gpus`` (-1: all ``visible``).

    With GPUs, one worker per device; ``workers``, if given, must agree.
    """
    if not gpus:
        workers = workers or default_workers
        return ClusterPlan(workers, max(1, cores // workers))
    if visible == 0:
        raise ClusterError(f"--gpus {'all' if gpus < 0 else gpus}: torch sees no CUDA device on this machine "
                           "(run without --gpus for CPU workers)")
    count = visible if gpus < 0 else gpus
    if count > visible:
        raise ClusterError(f"--gpus {count}: only {visible} CUDA device(s) visible on this machine")
    if workers is not None and workers != count:
        raise ClusterError(f"--gpus {count} starts one worker per GPU; --workers {workers} does not fit")
    return ClusterPlan(count, max(1, cores // count), tuple(range(count)))


def visible_gpus() -> int:
    """CUDA devices torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_resources(client: Any) -> dict[str, int] | None:
    """``{"GPU": 1}`` when some worker of ``client``'s cluster declares GPUs (tasks then run only there), else None."""
    workers = client.scheduler_info()["workers"].values()
    return {GPU: 1} if any(GPU in w.get("resources", {}) for w in workers) else None


@contextmanager
def dask_client(scheduler: str | None, plan: ClusterPlan, allowed_failures: int | None = None) -> Iterator[Any]:
    """A Dask client: on ``scheduler`` (or DASK_SCHEDULER_ADDRESS) if given, else on a new local cluster of ``plan``.

    ``allowed_failures``: how often a task may lose its worker before it fails (Dask's default if None).
    """
    import dask
    from distributed import Client, LocalCluster, Scheduler, SpecCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address, timeout="30s") as client:
            yield client
        return
    settings = {} if allowed_failures is None else {"distributed.scheduler.allowed-failures": allowed_failures}
    with dask.config.set(settings):
        if plan.devices:
            scheduler_spec = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
            cluster = SpecCluster(workers=plan.worker_specs(), scheduler=scheduler_spec, silence_logs=logging.ERROR)
        else:
            cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            yield client
