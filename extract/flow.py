"""Optical flow of the extraction stage: TV-L1 and Farneback (OpenCV, CPU) or RAFT-small (torchvision, device).

A :class:`FlowEstimator` is built once per worker and turns batches of frame pairs into flow
fields: channel 0 is x (right positive), channel 1 is y (down positive), in pixels of the resolution
the flow was computed at (:meth:`FlowEstimator.computed_at`). :func:`flow_to_image` maps flow to the
uint8 images two-stream networks read.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

from glimpse.extract.device import upload
from glimpse.extract.weights import cached_weights_file, file_sha256, load_checked_state_dict, read_state_dict

FLOW_METHODS = ("tvl1", "farneback", "raft")  # "none" (no flow stream) is the caller's business

#: cv2.calcOpticalFlowFarneback parameters (OpenCV's documented example values)
FARNEBACK_PARAMS = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
#: recurrent refinement steps of RAFT (torchvision's default)
RAFT_UPDATES = 12
#: Bytes RAFT's correlation volumes of one batch may take: a batch holds as many pairs as fit (at most the CNN's
#: batch). A pair of h x w frames holds 4 bytes x ((h/8) (w/8))^2 for its all-pairs volume at 1/8 resolution and a
#: third more for the pyramid: 5.6 GB at 1080p (one pair a batch; the CNN's 32 would need ~180 GB), 0.2 GB at 480p.
RAFT_BATCH_BYTES = 8 * 2**30
#: RAFT-small's correlation pyramid needs inputs of at least this side (8 x 16); smaller ones are padded
RAFT_MIN_SIDE = 128


def _pretrained_raft(weights: str) -> Raft_Small_Weights | None:
    """``"default"`` / ``"imagenet"`` (alias, as for backbones) / an enum member name -> enum, else None."""
    if weights in ("default", "imagenet"):
        return Raft_Small_Weights.DEFAULT
    return Raft_Small_Weights.__members__.get(weights)


def build_raft(weights: str = "none") -> tuple[torch.nn.Module, str]:
    """torchvision RAFT-small in eval mode and its weights identity.

    ``weights``: ``"none"`` (seeded random init, ``torch.manual_seed(0)``, caller's RNG untouched),
    ``"default"`` (``Raft_Small_Weights.DEFAULT``, read from torch's hub cache, never downloaded:
    :class:`extract.weights.WeightsNotAvailable` otherwise), an enum member name, or a
    ``state_dict`` file path (identity: ``"sha256:<hex>"``).
    """
    if weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return raft_small(weights=None).eval(), "none"
    model = raft_small(weights=None)
    pretrained = _pretrained_raft(weights)
    if pretrained is not None:
        source, identity = f"{pretrained} ({cached_weights_file(pretrained)})", pretrained.name
        state = pretrained.get_state_dict(progress=False, check_hash=False, map_location="cpu", weights_only=True)
    else:
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"RAFT weights {weights!r}: no such file (expected 'none', 'default', one of "
                f"{', '.join(Raft_Small_Weights.__members__)}, or a state_dict path)"
            )
        source, identity, state = weights, f"sha256:{file_sha256(weights)}", read_state_dict(weights)
    load_checked_state_dict(model, state, source)
    return model.eval(), identity


class FlowEstimator:
    """Dense optical flow between frame pairs with one method; build once per worker, not thread-safe.

    ``method``: one of :data:`FLOW_METHODS`. ``weights``: RAFT only (see :func:`build_raft`); the
    OpenCV methods take ``"none"``. ``size``: resize frames so their shorter side is ``size`` before
    computing (None: source resolution). ``batch_size``: RAFT pairs per forward pass at most (:meth:`batch_for`).
    OpenCV runs its own thread pool; call ``cv2.setNumThreads`` in the worker to bound it.
    Attributes: ``method``, ``size``, ``device``, ``weights_identity``, ``params`` (for store metadata).
    """

    def __init__(
        self, method: str, device: str = "cpu", weights: str = "none", size: int | None = None, batch_size: int = 8
    ):
        if method not in FLOW_METHODS:
            raise ValueError(f"unknown flow method {method!r}; known: {', '.join(FLOW_METHODS)}")
        if size is not None and (int(size) != size or size < 8):
            raise ValueError(f"flow size must be None or an integer >= 8 (shorter side in pixels), got {size!r}")
        if method != "raft" and weights != "none":
            raise ValueError(f"flow method {method} has no weights; got weights={weights!r}, expected 'none'")
        self.method, self.size, self.device, self.batch_size = method, size, torch.device(device), batch_size
        self.weights_identity = "none"
        if method == "tvl1":
            self._tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()  # OpenCV defaults, as in the TSN tools
            self.params = {"opencv": cv2.__version__, "tau": self._tvl1.getTau(), "lambda": self._tvl1.getLambda()}
        elif method == "farneback":
            self.params = {"opencv": cv2.__version__, **FARNEBACK_PARAMS}
        else:
            self._raft, self.weights_identity = build_raft(weights)
            self._raft.to(self.device)
            self.params = {"updates": RAFT_UPDATES}

    def computed_at(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the flow of (height, width) frames is computed at: shorter side ``size``, aspect kept."""
        if self.size is None or min(height, width) == self.size:
            return height, width
        scale = self.size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow from ``first`` to ``second``, both (N, H, W, 3) uint8 RGB -> (N, 2, h, w) float32 (x, y)."""
        first, second = self.prepare(first, second)  # (N, h, w, 3)
        if self.method != "raft":
            return self.opencv(first, second)
        out = np.empty((len(first), 2, *first.shape[1:3]), dtype=np.float32)
        step = self.batch_for(*first.shape[1:3])
        for start in range(0, len(first), step):
            pair = (torch.from_numpy(x[start : start + step]) for x in (first, second))
            out[start : start + step] = self.raft(*pair).cpu().numpy()  # (b, 2, h, w)
        return out

    def prepare(self, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Check (N, H, W, 3) uint8 frame pairs and resize them to :meth:`computed_at`; thread-safe."""
        for name, frames in (("first", first), ("second", second)):
            if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
                raise ValueError(
                    f"flow {name}: expected (N, H, W, 3) uint8 RGB, got {getattr(frames, 'shape', frames)}"
                )
        if first.shape != second.shape or first.shape[-1] != 3:
            raise ValueError(f"flow: frame pairs must have equal (N, H, W, 3) shapes, got {first.shape} {second.shape}")
        h, w = self.computed_at(*first.shape[1:3])
        return self._resize(first, h, w), self._resize(second, h, w)  # (N, h, w, 3)

    def opencv(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """TV-L1 or Farneback flow of prepared (N, h, w, 3) pairs -> (N, 2, h, w) float32, on the CPU."""
        out = np.empty((len(first), 2, *first.shape[1:3]), dtype=np.float32)
        for i, (a, b) in enumerate(zip(first, second, strict=True)):
            a, b = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)  # (h, w) uint8
            if self.method == "tvl1":
                flow = self._tvl1.calc(a, b, None)  # (h, w, 2)
            else:
                flow = cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK_PARAMS)  # (h, w, 2)
            out[i] = flow.transpose(2, 0, 1)  # (2, h, w)
        return out

    @staticmethod
    def _resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
        if frames.shape[1:3] == (h, w):
            return np.ascontiguousarray(frames)
        shrink = h < frames.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR  # INTER_AREA antialiases
        return np.stack([cv2.resize(f, (w, h), interpolation=interpolation) for f in frames])

    def batch_for(self, h: int, w: int) -> int:
        """RAFT pairs per batch at (h, w) (prepared frames): as many as :data:`RAFT_BATCH_BYTES` holds, 1 to
        ``batch_size``."""
        cells = max(-(-h // 8) * 8, RAFT_MIN_SIDE) // 8 * (max(-(-w // 8) * 8, RAFT_MIN_SIDE) // 8)  # (h/8) (w/8)
        return max(1, min(self.batch_size, RAFT_BATCH_BYTES // (4 * cells * cells * 4 // 3)))

    def raft(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """RAFT flow of prepared pairs, (n, h, w, 3) uint8 tensors with n <= :meth:`batch_for` (any device, any
        mix of videos of one size) -> (n, 2, h, w) float32 on :attr:`device`; host pairs go there through
        :func:`glimpse.extract.device.upload` (pinned, non-blocking), as the CNN's frames do.

        The pairs run as one batch of :meth:`batch_for` (padded with copies of the first pair), so a pair's
        flow does not depend on its batch-mates: batched across videos equals pair by pair.
        """
        n, h, w = first.shape[:3]
        pad_h, pad_w = max(-(-h // 8) * 8, RAFT_MIN_SIDE) - h, max(-(-w // 8) * 8, RAFT_MIN_SIDE) - w
        filler = self.batch_for(h, w) - n
        if filler > 0:
            first, second = (torch.cat([x, x[:1].expand(filler, -1, -1, -1)]) for x in (first, second))  # (B, h, w, 3)
        # contiguous: the memory layout picks the conv kernels, so it must not depend on how the batch was made
        a, b = (upload(x, self.device).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1 for x in (first, second))
        a, b = (F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") for x in (a, b))  # (B, 3, h8, w8) in [-1, 1]
        with torch.inference_mode():
            flow = self._raft(a, b, num_flow_updates=RAFT_UPDATES)[-1]  # (B, 2, h8, w8)
        return flow[:n, :, :h, :w].float()  # (n, 2, h, w)


def flow_to_image(flow: np.ndarray | torch.Tensor, bound: float = 20.0) -> np.ndarray | torch.Tensor:
    """(N, 2, h, w) flow -> (N, h, w, 3) uint8 images: channels x, y, magnitude.

    x and y are clipped to [-bound, bound] and mapped linearly with 0 -> 128, one step = bound / 128
    pixels (-bound -> 0, +bound -> 255 after clipping 256); the magnitude of the unclipped flow is
    clipped to [0, bound] and mapped to 0..255. :func:`image_to_flow` inverts the x, y channels.
    A tensor stays a tensor on its device (RAFT's output feeds the flow-stream CNN there); numpy
    goes through the same torch code, so both give the same images.
    """
    tensor = isinstance(flow, torch.Tensor)
    f = flow.float() if tensor else torch.from_numpy(np.asarray(flow, dtype=np.float32))
    if f.ndim != 4 or f.shape[1] != 2:
        raise ValueError(f"flow_to_image: expected (N, 2, h, w) flow, got {tuple(f.shape)}")
    xy = torch.round(128 + f.clamp(-bound, bound) * (128 / bound))  # (N, 2, h, w), half to even as np.rint
    magnitude = torch.round(torch.hypot(f[:, 0], f[:, 1]).clamp(0, bound) * (255 / bound))  # (N, h, w)
    image = torch.cat([xy, magnitude[:, None]], dim=1).clamp(0, 255).to(torch.uint8)  # (N, 3, h, w)
    image = image.permute(0, 2, 3, 1).contiguous()  # (N, h, w, 3)
    return image if tensor else image.numpy()


def image_to_flow(image: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """(N, h, w, 3) uint8 images of :func:`flow_to_image` -> (N, 2, h, w) float32 flow (within bound / 128)."""
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image_to_flow: expected (N, h, w, 3) uint8, got {image.shape} {image.dtype}")
    xy = image[..., :2].transpose(0, 3, 1, 2).astype(np.float32)  # (N, 2, h, w)
    return (xy - 128) * (bound / 128)
