"""Video backbones: torchvision's Kinetics-400 networks cut at their last grid, one feature cube per clip of frames.

A video backbone turns the decoded frames (T, H, W, 3) into (steps, C, K, K): the frames are cut into clips of
``clip_frames`` consecutive decoded frames, one clip starting every ``clip_stride`` frames (:func:`clip_positions`),
each clip goes through the network as (3, N, S, S), and the node's (C, T', K, K) output is averaged over its time
axis T' (the temporal pooling: a mean). Each stored step stands at its clip's middle frame (``frame_indices``,
``timestamps``) and records the first and last frames it covers (``step_frames``, ``step_timestamps``).

The entries register in :data:`glimpse.extract.backbones.BACKBONES` (``--backbone r3d_18``) as
:class:`VideoBackboneSpec`; weights are ``none`` (seeded random init, batch norm calibrated on a clip, the float16
check as for the 2D networks; MViT and Swin3D are LayerNorm networks), a torchvision enum name, or a state_dict file
of the same architecture (loaded by :func:`glimpse.extract.backbones.loaded_body`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.models import get_model, get_model_weights

from glimpse.extract.backbones import (
    BACKBONES,
    BackboneError,
    BackboneSpec,
    FeatureExtractor,
    cut_model,
    loaded_body,
    resolve_weights,
)
from glimpse.extract.random_weights import calibrate_batchnorm, check_float16_range, synthetic_calibration_frames

#: How a node's output holds the clip's grid: ``video_grid`` (B, C, T', K, K); ``video_tokens`` (B, 1 + T'*K*K, C),
#: a class token then the patch tokens time by time, row by row (MViT), of which the cube keeps the patch tokens.
VIDEO_GRID, VIDEO_TOKENS = "video_grid", "video_tokens"

#: Default frames per clip: what every torchvision video network was trained on (MViT takes nothing else).
CLIP_FRAMES = 16


def _preset(arch: str) -> dict[str, Any]:
    """Mean and std of ``arch``'s torchvision weights (Kinetics-400 statistics for the ResNets and S3D)."""
    keywords = get_model_weights(arch)["DEFAULT"].transforms.keywords  # torchvision's VideoClassification defaults:
    return {"mean": tuple(keywords.get("mean", (0.43216, 0.394666, 0.37645))),
            "std": tuple(keywords.get("std", (0.22803, 0.22145, 0.216989)))}


@dataclass(frozen=True)
class VideoBackboneSpec(BackboneSpec):
    """A video network: :class:`~glimpse.extract.backbones.BackboneSpec` plus its clip (``clip``: default frames per
    clip; ``min_frames``: the fewest it takes; ``fixed``: it takes exactly ``clip``) and its temporal pooling."""

    clip: int = CLIP_FRAMES
    min_frames: int = 1
    fixed: bool = False
    pooling: str = "mean over the clip's time axis"


def _video(name: str, layer: str, channels: int, size: int, layout: str = VIDEO_GRID, **clip: Any) -> VideoBackboneSpec:
    return VideoBackboneSpec(name, name, layer, channels, size, 7, layout, **_preset(name), **clip)


VIDEO_BACKBONES: dict[str, VideoBackboneSpec] = {
    # the 18-layer video ResNets: their last stage (B, 512, T/8, S/16, S/16); mc3 keeps T there (3D convs only first)
    "r3d_18": _video("r3d_18", "layer4", 512, 112),
    "r2plus1d_18": _video("r2plus1d_18", "layer4", 512, 112),
    "mc3_18": _video("mc3_18", "layer4", 512, 112),
    # S3D's last mixed block (B, 1024, T/8, S/32, S/32); its pooling window needs >= 14 frames at 224 px
    "s3d": _video("s3d", "features", 1024, 224, min_frames=14),
    # MViT v2: the 1 + 8 * 7 * 7 tokens after its final LayerNorm (fixed 16 x 224 x 224 input; class token dropped)
    "mvit_v2_s": _video("mvit_v2_s", "norm", 768, 224, VIDEO_TOKENS, fixed=True),
    # Swin3D's last stage after its LayerNorm, permuted to (B, C, T/2, S/32, S/32) by the model itself
    "swin3d_t": _video("swin3d_t", "permute", 768, 224),
}
BACKBONES.update(VIDEO_BACKBONES)


def is_video_backbone(name: str) -> bool:
    """Whether backbone ``name`` is a video network (its steps are clips)."""
    return isinstance(BACKBONES.get(name), VideoBackboneSpec)


def check_clip(spec: VideoBackboneSpec, clip_frames: int, clip_stride: int) -> str | None:
    """Why ``spec`` cannot take clips of ``clip_frames`` every ``clip_stride`` frames (None: it can)."""
    if clip_frames < 1 or clip_stride < 1:
        return f"clips need at least one frame and a stride of at least one (got {clip_frames}, {clip_stride})"
    if spec.fixed and clip_frames != spec.clip:
        return f"{spec.name} takes exactly {spec.clip} frames per clip (got {clip_frames})"
    if clip_frames < spec.min_frames:
        return f"{spec.name} needs at least {spec.min_frames} frames per clip (got {clip_frames})"
    return None


def clip_positions(n: int, clip_frames: int, clip_stride: int) -> np.ndarray:
    """The clip rule: positions (steps, clip_frames) into ``n`` decoded frames of each clip's frames.

    A clip starts every ``clip_stride`` frames (0, stride, 2 * stride, ...) while it fits whole; frames after the last
    whole clip are not covered. A video shorter than one clip gives one clip, its last frame repeated to fill it.
    """
    if n == 0:
        return np.zeros((0, clip_frames), dtype=np.int64)
    starts = np.arange(0, max(n - clip_frames, 0) + 1, clip_stride)  # (steps,)
    return np.minimum(starts[:, None] + np.arange(clip_frames)[None, :], n - 1)  # (steps, clip_frames)


def steps_of(result: dict[str, Any], positions: np.ndarray) -> None:
    """Turn a video's per-frame ``result`` attributes into per-step ones for clips at ``positions`` (steps, N):
    each step stands at its clip's middle frame and records the first and last frames (and times) it covers; its
    box (localisation's target) is the union of the boxes of the frames it covers (NaN where none has one)."""
    indices, times = result["frame_indices"], result["timestamps"]
    first, last = positions[:, 0], positions.max(axis=1)  # (steps,) each
    middle = (first + last) // 2
    result["n_frames"] = len(positions)
    result["frame_indices"] = [indices[i] for i in middle]
    result["timestamps"] = [times[i] for i in middle]
    result["step_frames"] = [[indices[a], indices[b]] for a, b in zip(first, last, strict=True)]
    result["step_timestamps"] = [[times[a], times[b]] for a, b in zip(first, last, strict=True)]
    if "boxes" in result:
        boxes = np.asarray(result["boxes"], dtype=np.float64)[positions]  # (steps, N, 4)
        with warnings.catch_warnings():  # a step none of whose frames has a box stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            union = np.concatenate([np.nanmin(boxes[..., :2], axis=1), np.nanmax(boxes[..., 2:], axis=1)], axis=1)
        result["boxes"] = union.tolist()  # (steps, 4)


@functools.cache
def video_node_shape(spec: VideoBackboneSpec, size: int, frames: int) -> tuple[int, ...]:
    """Shape of ``spec``'s node output for one clip of ``frames`` S x S frames (dry forward on 'meta')."""
    with torch.device("meta"):
        model = get_model(spec.arch, weights=None)
    body = cut_model(model, spec.name, spec.layer)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.fx prints the traced code of a failing forward
            return tuple(body(torch.empty(1, 3, frames, size, size, device="meta"))["features"].shape)
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackboneError(f"backbone {spec.name}: clips of {frames} frames at {size} px are too small "
                            f"({reason})") from None


def clip_grid(spec: VideoBackboneSpec, size: int, frames: int) -> tuple[int, int]:
    """(T', K) of ``spec``'s node for clips of ``frames`` frames at S = ``size``: its time steps and its grid."""
    shape = video_node_shape(spec, size, frames)
    if spec.layout == VIDEO_TOKENS:  # MViT's patch embedding halves the time axis: (B, 1 + T/2 * K * K, C)
        time = frames // 2
        side = math.isqrt((shape[1] - 1) // max(time, 1))
        if len(shape) != 3 or shape[2] != spec.channels or time * side * side != shape[1] - 1:
            raise BackboneError(f"{spec.name}: node {spec.layer!r} gives {shape}, not (B, 1 + T' * K * K, "
                                f"{spec.channels})")
        return time, side
    if len(shape) != 5 or shape[1] != spec.channels or shape[3] != shape[4]:
        raise BackboneError(f"{spec.name}: node {spec.layer!r} gives {shape}, not (B, {spec.channels}, T', K, K)")
    return shape[2], shape[3]


class VideoFeatureExtractor(FeatureExtractor):
    """Clips of uint8 RGB frames (steps, N, H, W, 3) -> (steps, C, K, K) float32 features: each clip through the video
    network, the node's (C, T', K, K) averaged over T'. Eval mode, no grad. ``clip_frames`` N, ``clip_stride``."""

    def __init__(self, spec: VideoBackboneSpec, body: torch.nn.Module, size: int, weights_identity: str, device: str,
                 clip_frames: int, clip_stride: int):
        why = check_clip(spec, clip_frames, clip_stride)
        if why:
            raise BackboneError(why)
        self.video_spec, self.clip_frames, self.clip_stride = spec, clip_frames, clip_stride
        self.time, _ = clip_grid(spec, size, clip_frames)
        super().__init__(spec, body, size, weights_identity, device)

    def grid_at(self, size: int) -> int:
        """K at S = ``size`` for this extractor's clips."""
        return clip_grid(self.video_spec, size, self.clip_frames)[1]

    def clips(self, frames: np.ndarray, result: dict[str, Any] | None = None) -> np.ndarray:
        """(T, H, W, 3) decoded frames -> (steps, N, H, W, 3) clips by :func:`clip_positions`; ``result`` (the
        video's attributes) becomes per step (:func:`steps_of`)."""
        positions = clip_positions(len(frames), self.clip_frames, self.clip_stride)  # (steps, N)
        if result is not None:
            steps_of(result, positions)
        return np.asarray(frames)[positions]  # (steps, N, H, W, 3)

    def preprocess(self, frames: np.ndarray | Tensor) -> Tensor:
        """(b, N, H, W, 3) uint8 clips -> (b, 3, N, S, S) float, normalised as the network's weights expect."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if frames.ndim != 5:
            raise ValueError(f"{self.spec.name}: clips must be (b, N, H, W, 3) uint8 RGB, got {tuple(frames.shape)}")
        b, n = frames.shape[:2]
        images = super().preprocess(frames.flatten(0, 1))  # (b * N, 3, S, S)
        return images.unflatten(0, (b, n)).transpose(1, 2).contiguous()  # (b, 3, N, S, S)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, N, S, S) preprocessed clips -> (B, C, K, K) float32 features, the node's time axis averaged."""
        with torch.inference_mode():
            out = self.body(images)["features"]  # (B, C, T', K, K), or (B, 1 + T'*K*K, C) tokens
            if self.spec.layout == VIDEO_TOKENS:  # class token dropped, the patch tokens back on (T', K, K)
                out = out[:, 1:].transpose(1, 2).unflatten(2, (self.time, self.grid, self.grid))
            return out.mean(dim=2).float().contiguous()  # (B, C, K, K)

    def features(self, frames: np.ndarray | Tensor, batch_size: int = 2) -> np.ndarray:
        """(steps, N, H, W, 3) uint8 clips -> (steps, C, K, K) float32 features, ``batch_size`` clips at a time."""
        out = np.empty((len(frames), self.spec.channels, self.grid, self.grid), dtype=np.float32)
        for start in range(0, len(frames), batch_size):
            batch = self.preprocess(frames[start : start + batch_size])  # (b, 3, N, S, S)
            out[start : start + len(batch)] = self.fixed_batch(batch, batch_size).cpu().numpy()  # (b, C, K, K)
        return out


def clips_per_batch(frames_per_batch: int, clip_frames: int) -> int:
    """Clips per network batch for ``--batch-size`` frames: as many whole clips as fit, at least one."""
    return max(1, frames_per_batch // clip_frames)


def build_video_backbone(name: str, weights: str = "none", device: str = "cpu",
                         calibration_frames: np.ndarray | None = None, size: int | None = None,
                         clip_frames: int | None = None, clip_stride: int | None = None) -> VideoFeatureExtractor:
    """Build the feature extractor of video backbone ``name`` for clips of ``clip_frames`` (default the spec's) every
    ``clip_stride`` frames (default: ``clip_frames``, clips side by side).

    ``weights``: ``"none"`` (seeded random init, batch norm calibrated on one clip of ``calibration_frames`` (T, H, W,
    3) uint8, its last frame repeated to fill it, or on seeded synthetic images; then the float16 check), a
    torchvision enum member name or ``"imagenet"`` (the architecture's default, Kinetics-400) from torch's hub cache,
    or a state_dict path.
    """
    spec = VIDEO_BACKBONES.get(name)
    if spec is None:
        raise BackboneError(f"unknown video backbone {name!r}; known: {', '.join(VIDEO_BACKBONES)}")
    size = spec.size if size is None else int(size)
    clip_frames = spec.clip if clip_frames is None else int(clip_frames)
    clip_stride = clip_frames if clip_stride is None else int(clip_stride)
    why = check_clip(spec, clip_frames, clip_stride)
    if why:
        raise BackboneError(why)
    clip_grid(spec, size, clip_frames)  # fails early and clearly on a too small input
    resolved = resolve_weights(spec.arch, weights)
    if resolved is not None:
        body, identity = loaded_body(spec, resolved, size)
        return VideoFeatureExtractor(spec, body, size, identity, device, clip_frames, clip_stride)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_model(spec.arch, weights=None)
    identity = "none"
    if calibration_frames is not None:
        calibration_frames = np.ascontiguousarray(calibration_frames[:clip_frames])
        digest = hashlib.sha256(repr(calibration_frames.shape).encode() + calibration_frames.tobytes())
        identity = f"none+calib:{digest.hexdigest()}"
    extractor = VideoFeatureExtractor(spec, cut_model(model, spec.name, spec.layer), size, identity, device,
                                      clip_frames, clip_stride)
    frames = synthetic_calibration_frames(size, count=clip_frames) if calibration_frames is None else calibration_frames
    clip = extractor.preprocess(frames[np.minimum(np.arange(clip_frames), len(frames) - 1)][None])  # (1, 3, N, S, S)
    calibrate_batchnorm(extractor.body, clip)
    extractor.eval()
    check_float16_range(f"{spec.name} at {spec.layer}", extractor(clip))
    return extractor


def describe_clips(spec: BackboneSpec, size: int, clip_frames: int | None, clip_stride: int | None) -> dict[str, Any]:
    """The rgb stream's StreamInfo fields of a video backbone: frame shape and the clip sampling."""
    assert isinstance(spec, VideoBackboneSpec)
    frames = spec.clip if clip_frames is None else clip_frames
    _, grid = clip_grid(spec, size, frames)
    return {"frame_shape": [spec.channels, grid, grid], "backbone": spec.name, "layer": spec.layer,
            "clip": [frames, frames if clip_stride is None else clip_stride]}

