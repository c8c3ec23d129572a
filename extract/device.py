"""What extraction does with its device: uploads, the device a video was computed on, and a device that was lost.

:func:`upload` is the one way a host tensor reaches the models' device (the CNN's frames and RAFT's pairs):
pinned and non-blocking to CUDA. :func:`device_label` names the device a video's features came from (its
``device`` in the store). An unrecoverable CUDA error (an illegal memory access, a launch failure, a
device-side assert) leaves the process's CUDA context dead, so every later batch there would fail too:
:func:`device_lost` recognises one, and the worker raises :class:`DeviceLost` instead of recording its
videos as failed; the client replaces that worker and runs what its task left one video per task
(:mod:`glimpse.extract.pipeline`).

Test-only fault hook: with ``GLIMPSE_FAULT_DEVICE_LOST=<video id>`` in a worker's environment,
:func:`fault_point` raises a CUDA-style RuntimeError for a batch that holds a frame of that video, and
for every batch of that process after it, as a dead CUDA context does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from glimpse.errors import GlimpseError

#: Environment variable naming a video whose batch fails as after a lost device (tests; see the module docstring).
FAULT_ENV = "GLIMPSE_FAULT_DEVICE_LOST"
#: What the fault hook raises: the message torch gives for an illegal memory access.
FAULT_MESSAGE = "CUDA error: an illegal memory access was encountered"
#: Messages of CUDA errors after which the context is unusable (torch's RuntimeError, or AcceleratorError).
LOST_MARKERS = ("illegal memory access", "unspecified launch failure", "device-side assert triggered",
                "an illegal instruction", "misaligned address", "CUDA error: launch failure",
                "CUDNN_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_EXECUTION_FAILED", "CUDA error: uncorrectable ECC",
                "CUDA error: unknown error")

_dead = False  # set once the fault hook fired in this process: every later batch fails, as on a dead context
_lost: str | None = None  # this process's first DeviceLost message: its context is dead, whatever runs next


class DeviceLost(GlimpseError, RuntimeError):
    """The worker's device failed beyond recovery (its CUDA context is dead): ``worker`` (its Dask address, None
    outside a worker) must be replaced before it runs anything else. ``inherited``: the device was already lost
    by an earlier task of this process (a task queued behind the one that lost it), so the loss says nothing of
    this task's videos."""

    def __init__(self, message: str, worker: str | None = None, inherited: bool = False) -> None:
        super().__init__(message)
        self.worker = worker
        self.inherited = inherited

    def __reduce__(self):  # pickled to the client with its worker
        return type(self), (str(self), self.worker, self.inherited)

    @classmethod
    def of(cls, exc: BaseException) -> DeviceLost:
        """The DeviceLost of ``exc`` (itself if it is one), naming this process's Dask worker; remembered, so that
        every later task of this process is refused (:func:`refuse_if_lost`)."""
        global _lost
        if isinstance(exc, DeviceLost):
            return exc
        first = (str(exc).strip().splitlines() or [""])[0]
        message, inherited = f"device lost ({type(exc).__name__}: {first})", _lost is not None
        _lost = _lost or message
        return cls(message, _worker_address(), inherited)


def refuse_if_lost() -> None:
    """Raise an inherited :class:`DeviceLost` when an earlier task of this process lost its device: a task queued
    behind that one must neither touch the dead context nor be blamed for it (the client runs it again on the
    replaced worker)."""
    if _lost is not None:
        raise DeviceLost(_lost, _worker_address(), inherited=True)


def _worker_address() -> str | None:
    """This process's Dask worker address; None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not in a Dask worker
        return None


def device_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is an unrecoverable device error: a torch AcceleratorError, or a
    RuntimeError naming a CUDA error that leaves the context dead. Out of memory is not one (it recovers)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    accelerator = getattr(torch, "AcceleratorError", None)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DeviceLost):
            return True
        text = str(current)
        if "out of memory" not in text and (
            (accelerator is not None and isinstance(current, accelerator))
            or (isinstance(current, RuntimeError) and any(marker in text for marker in LOST_MARKERS))
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def fault_point(video_ids: Iterable[str]) -> None:
    """Test-only: raise a CUDA-style RuntimeError when :data:`FAULT_ENV` names one of ``video_ids`` (a batch of
    theirs), and for every call after that in this process (its context is dead); nothing when it is unset."""
    global _dead
    named = os.environ.get(FAULT_ENV)
    if not named:
        return
    if _dead or named in set(video_ids):
        _dead = True
        raise RuntimeError(FAULT_MESSAGE)


def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``: a host tensor goes to CUDA through pinned memory, non-blocking (the copy overlaps the
    batch the device is running; the stream orders it before any use there); a tensor already there is returned as
    it is; any other move is a plain ``.to``."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def device_label(device: torch.device | str) -> str:
    """The device a video's features are computed on, as the store records it: ``cpu``, or ``cuda`` and the GPU's
    name (``cuda NVIDIA H200``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return f"cuda {torch.cuda.get_device_name(device)}"
