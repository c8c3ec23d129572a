"""The one Dask cluster set-up of the stages (extraction, training sweeps): an existing scheduler, or a local cluster.

On a CPU-only machine: a LocalCluster of ``workers`` processes, one thread each. With ``gpus``: one
worker per device, each pinned to it (``CUDA_VISIBLE_DEVICES`` set in that worker's nanny to one entry
of the parent's own list, so its ``"cuda"`` is its own GPU and never a GPU the job scheduler gave to
someone else), declaring the Dask resource ``{"GPU": 1}`` and allowed RAM / workers of memory; tasks
that ask for the resource run only on such workers. An existing cluster (``--scheduler`` or
DASK_SCHEDULER_ADDRESS) is used as it is: its GPU workers are those that declare the resource (``dask
worker --resources GPU=1``), and :func:`worker_device` gives each its own device.

``--gpus`` on a machine where torch sees no CUDA device is a clear one-line error
(:class:`ClusterError`), not a silent fall back to the CPU. Dask's own log lines are hidden unless
``verbose``, and workers are given the time to exit on their own at a normal shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from glimpse.errors import GlimpseError, OptionError

log = logging.getLogger(__name__)

#: The Dask resource GPU workers declare and GPU tasks ask for.
GPU = "GPU"
#: Seconds a worker process gets to exit on its own at shutdown before its nanny kills it. Dask's default is 4 s;
#: the interpreter teardown of a worker that imported torch and torchvision takes 1.5 to 5 s on a loaded machine.
EXIT_TIMEOUT = 60.0


class ClusterError(OptionError):
    """A cluster that cannot be set up as asked (e.g. more GPUs than are visible); the message names the option and
    says why (a usage error: exit status 2)."""


class ClusterCannotRun(GlimpseError, RuntimeError):
    """A running cluster that cannot run what is asked (no worker has a GPU); the message names the cluster."""


@dataclass(frozen=True)
class ClusterPlan:
    """The local workers to start: ``devices`` holds each worker's CUDA_VISIBLE_DEVICES entry (empty: CPU workers)."""

    workers: int
    threads: int  # torch threads per task, so that the workers together use the machine's cores once
    devices: tuple[str, ...] = ()

    def worker_specs(self, memory: int | None = None, silence_logs: int = logging.ERROR) -> dict[int, dict[str, Any]]:
        """SpecCluster worker specs: one nanny per device, pinned to it, declaring one GPU resource, each allowed
        ``memory`` (default: the machine's RAM as Dask counts it) / workers bytes; the workers' log lines below
        ``silence_logs`` are hidden."""
        from distributed import Nanny
        from distributed.system import MEMORY_LIMIT

        share = (memory or MEMORY_LIMIT) // max(1, len(self.devices))
        return {
            i: {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}, "memory_limit": share,
                                          "silence_logs": silence_logs, "env": {"CUDA_VISIBLE_DEVICES": device}}}
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


def parent_devices(count: int, visible: str | None) -> tuple[str, ...]:
    """The first ``count`` entries of the parent's CUDA_VISIBLE_DEVICES text ``visible`` (indices, UUIDs or MIG
    ids, as a job scheduler sets them); unset or empty: the physical indices 0 .. count - 1."""
    entries = [d.strip() for d in (visible or "").split(",") if d.strip()]
    if not entries:
        return tuple(str(i) for i in range(count))
    if len(entries) < count:
        raise ClusterError(f"--gpus {count}: CUDA_VISIBLE_DEVICES={visible} lists only {len(entries)} device(s)")
    return tuple(entries[:count])


def plan_cluster(workers: int | None, gpus: int | None, cores: int, visible: int, default_workers: int,
                 visible_ids: str | None = None) -> ClusterPlan:
    """The local cluster for ``workers`` (None: ``default_workers``) or ``gpus`` (-1: all ``visible``).

    With GPUs, one worker per device, pinned to the matching entry of ``visible_ids`` (the parent's
    CUDA_VISIBLE_DEVICES; None: read from the environment); ``workers``, if given, must agree.
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
    ids = os.environ.get("CUDA_VISIBLE_DEVICES") if visible_ids is None else visible_ids
    return ClusterPlan(count, max(1, cores // count), parent_devices(count, ids))


def visible_gpus() -> int:
    """CUDA devices torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_workers(client: Any) -> int:
    """How many workers of ``client``'s cluster declare the GPU resource."""
    return sum(GPU in w.get("resources", {}) for w in client.scheduler_info()["workers"].values())


def gpu_resources(client: Any) -> dict[str, int] | None:
    """``{"GPU": 1}`` when some worker of ``client``'s cluster declares GPUs (tasks then run only there), else None."""
    return {GPU: 1} if gpu_workers(client) else None


def device_rank(address: str, workers: Mapping[str, Mapping[str, Any]]) -> int:
    """The rank of worker ``address`` among the workers of its host (scheduler_info()["workers"]) that declare the
    GPU resource (all of the host's workers if none does), ordered by address."""
    host = workers[address].get("host")
    peers = [a for a, w in workers.items() if w.get("host") == host]
    declaring = [a for a in peers if GPU in workers[a].get("resources", {})]
    return sorted(declaring if address in declaring else peers).index(address)


def worker_device(count: int | None = None) -> str:
    """In a Dask worker's task: the CUDA device this worker uses, distinct from its host's other GPU workers.

    A worker that sees one device (its own CUDA_VISIBLE_DEVICES names one, as :class:`ClusterPlan` pins
    them) uses ``"cuda"``; one that sees ``count`` devices (default: torch's count) uses
    ``cuda:<rank % count>``, its :func:`device_rank` among its host's GPU workers, so that n workers on n
    GPUs land on n devices.
    """
    from distributed import get_client, get_worker

    if count is None:
        import torch

        count = torch.cuda.device_count()
    if count <= 1:
        return "cuda"
    worker = get_worker()
    return f"cuda:{device_rank(worker.address, get_client().scheduler_info()['workers']) % count}"


def replace_worker(client: Any, address: str) -> bool:
    """Give the worker at ``address`` a fresh process (its nanny restarts it: a dead CUDA context is gone with the
    old one), waiting until it is back; a worker without a nanny (an external ``dask worker --no-nanny``) that cannot
    be restarted is retired instead where others remain, so that nothing more is sent to its dead device. An address
    no longer in the cluster was replaced already (two tasks of one dead worker report it). False when the worker
    stays as it was (the last worker, and it could not be restarted)."""
    if address not in client.scheduler_info()["workers"]:
        return True
    try:
        status = client.restart_workers([address], raise_for_error=False).get(address)
    except Exception as err:  # an old scheduler, a worker gone meanwhile
        status = f"{type(err).__name__}: {err}"
    if status in ("OK", "removed"):
        return True
    log.warning("could not restart the Dask worker %s after its device was lost (%s)", address, status)
    if len(client.scheduler_info()["workers"]) > 1:
        client.retire_workers([address], close_workers=True)
        return True
    return False


def check_gpu_workers(client: Any, per_task: int, where: str) -> None:
    """Refuse in one line, before anything is submitted, tasks asking for ``per_task`` GPUs that no worker of
    ``client``'s cluster (at ``where``) has: they would wait forever."""
    largest = max((w.get("resources", {}).get(GPU, 0) for w in client.scheduler_info()["workers"].values()),
                  default=0)
    if largest < per_task:
        raise ClusterCannotRun(f"the Dask cluster at {where} has no worker with the resource {GPU}={per_task} (start "
                           f"its workers with 'dask worker --resources {GPU}=1', one per GPU), or run on the CPU")


@contextmanager
def dask_logs(verbose: bool) -> Iterator[None]:
    """Dask's own log lines (scheduler, nanny, worker start and stop) hidden below ERROR unless ``verbose``."""
    logger = logging.getLogger("distributed")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def close_workers(cluster: Any, timeout: float = EXIT_TIMEOUT) -> None:
    """Stop ``cluster``'s worker processes, each given ``timeout`` seconds to exit on its own.

    A cluster's close gives each worker 4 s and then SIGKILLs it, which the teardown of torch regularly
    exceeds ("Worker process ... was killed by signal 9" at every normal shutdown).
    """

    async def close_all() -> None:
        await asyncio.gather(*(worker.close(timeout=timeout) for worker in list(cluster.workers.values())))

    cluster.sync(close_all)


@contextmanager
def dask_client(scheduler: str | None, plan: ClusterPlan, allowed_failures: int | None = None,
                verbose: bool = False) -> Iterator[Any]:
    """A Dask client: on ``scheduler`` (or DASK_SCHEDULER_ADDRESS) if given, else on a new local cluster of ``plan``.

    ``allowed_failures``: how often a task may lose its worker before it fails (Dask's default if None).
    ``verbose``: show Dask's own log lines (hidden by default).
    """
    import dask
    from distributed import Client, LocalCluster, Scheduler, SpecCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with dask_logs(verbose), Client(address, timeout="30s") as client:
            yield client
        return
    settings = {} if allowed_failures is None else {"distributed.scheduler.allowed-failures": allowed_failures}
    quiet = logging.WARNING if verbose else logging.ERROR  # the workers' own log lines, in their processes
    with dask_logs(verbose), dask.config.set(settings):
        if plan.devices:
            scheduler_spec = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
            cluster = SpecCluster(workers=plan.worker_specs(silence_logs=quiet), scheduler=scheduler_spec,
                                  silence_logs=quiet)
        else:
            cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=quiet)
        with cluster:
            with Client(cluster) as client:
                yield client
            close_workers(cluster)
