"""How extraction computes each stream of the registry (``glimpse.store.schema.STREAMS``).

A :class:`~glimpse.store.schema.StreamSpec` names its compute as "module:attribute", one of:

- a plain function of a video's decoded frames, ``(T, H, W, 3) uint8 -> (T, ...)`` array: computed whole, on the
  CPU (in a decode thread of the pipelined path);
- a :class:`StreamCompute` subclass, which may be computed from another stream (``source``) and may run batched
  across videos on the device (``batched``: the CNN cubes, RAFT flow).

The sequential path (:class:`Extractor`) calls each stream's :meth:`StreamCompute.compute`
in order; the pipelined one (:mod:`glimpse.extract.batched`) calls the same ``compute`` for whole streams and
``inputs`` / ``prepare`` / ``run`` for batched ones. Both store the same bits.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import numpy as np
import torch

from glimpse.extract.backbones import FeatureExtractor, backbone_spec, build_backbone, output_grid
from glimpse.extract.config import ExtractConfig, Runtime
from glimpse.extract.datasets import read_boxes
from glimpse.extract.device import device_label, upload
from glimpse.extract.flow import FlowEstimator, flow_to_image
from glimpse.extract.video_backbones import (
    VideoFeatureExtractor,
    build_video_backbone,
    clips_per_batch,
    describe_clips,
    is_video_backbone,
)
from glimpse.media.decode import DecodedVideo, DecodeError, Sampling, decode_video
from glimpse.store import VideoRecord
from glimpse.store.schema import StreamSpec


class StreamCompute:
    """How extraction computes one stream: built once per worker from the worker's :class:`Extractor` (its models,
    config and runtime).

    ``source``: the stream whose (T, ...) array this one is computed from (None: the decoded video).
    ``needs_next``: the decoder must also return each sampled frame's successor (flow).
    ``batched``: the pipelined path runs it batched across videos: :meth:`inputs` (in a decode thread, or on the
    device when the source is batched too) cut into pieces of ``batch_size`` frames, :meth:`prepare` on each,
    :meth:`run` on batches of exactly ``batch_size``. Its outputs must not depend on their batch-mates (pad short
    batches), so that batched equals :meth:`compute`. A batched stream may not come from a whole stream whose own
    source is batched.
    """

    source: str | None = None
    needs_next: bool = False
    batched: bool = False
    batch_size: int = 0  # frames per batch of a batched stream

    def __init__(self, models: Extractor) -> None:
        self.models = models

    @property
    def config(self) -> ExtractConfig:
        return self.models.config

    @property
    def runtime(self) -> Runtime:
        return self.models.runtime

    @classmethod
    def check(cls, config: ExtractConfig) -> str | None:
        """Why ``config`` cannot compute this stream (None: it can)."""
        return None

    @classmethod
    def describe(cls, config: ExtractConfig) -> dict[str, Any]:
        """The stream's :class:`~glimpse.store.schema.StreamInfo` fields (dims aside) in a store of ``config``."""
        return {}

    def compute(self, source: Any, result: dict[str, Any]) -> np.ndarray:
        """The (T, ...) array of one video from ``source`` (its DecodedVideo or the source stream's array);
        may add attributes to the video's ``result``."""
        raise NotImplementedError

    def inputs(self, source: Any, result: dict[str, Any]) -> tuple[Any, ...]:
        """Batched streams: the whole video's model inputs, each (T, ...) (numpy, or device tensors)."""
        raise NotImplementedError

    def batch_for(self, shape: tuple[int, ...]) -> int:
        """Batched streams: the frames per batch of inputs whose frames are ``shape`` (one size for every batch of
        that shape, so that batched equals :meth:`compute`)."""
        return self.batch_size

    def prepare(self, *pieces: Any) -> tuple[torch.Tensor, ...]:
        """Batched streams: a piece of :meth:`inputs` (n <= ``batch_size`` frames) -> tensors for :meth:`run`."""
        raise NotImplementedError

    def run(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Batched streams: n <= ``batch_size`` frames' prepared tensors -> (n, ...) outputs."""
        raise NotImplementedError


class FrameFunction(StreamCompute):
    """A stream computed by a plain function of the decoded frames, ``(T, H, W, 3) uint8 -> (T, ...)``."""

    def __init__(self, models: Extractor, name: str, function: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(models)
        self.name, self.function = name, function

    def compute(self, source: DecodedVideo, result: dict[str, Any]) -> np.ndarray:
        out = np.asarray(self.function(source.frames))  # (T, ...)
        if out.ndim < 1 or len(out) != len(source.frames):
            raise ValueError(f"stream {self.name}: {len(source.frames)} frames gave an array of shape {out.shape}")
        return out


class RGBStream(StreamCompute):
    """CNN conv cubes (T, C, K, K) of the decoded frames; a video backbone's (steps, C, K, K), a step per clip, run
    ``--batch-size // clip_frames`` clips at a time."""

    batched = True

    def __init__(self, models: Extractor) -> None:
        super().__init__(models)
        self.backbone, self.batch_size = self.cnn(), self.runtime.batch_size
        if isinstance(self.backbone, VideoFeatureExtractor):
            self.batch_size = clips_per_batch(self.batch_size, self.backbone.clip_frames)

    def cnn(self) -> FeatureExtractor:
        return self.models.backbone

    @classmethod
    def describe(cls, config: ExtractConfig) -> dict[str, Any]:
        spec = backbone_spec(config.backbone, config.layer)
        if is_video_backbone(config.backbone):
            return describe_clips(spec, config.size, config.clip_frames, config.clip_stride)
        grid = output_grid(spec, config.size)
        return {"frame_shape": [spec.channels, grid, grid], "backbone": spec.name, "layer": spec.layer}

    def compute(self, source: Any, result: dict[str, Any]) -> np.ndarray:
        return self.backbone.features(self.inputs(source, result)[0], self.batch_size)  # (T, C, K, K)

    def inputs(self, source: DecodedVideo, result: dict[str, Any]) -> tuple[Any, ...]:
        if isinstance(self.backbone, VideoFeatureExtractor):  # the video's result becomes per step
            return (self.backbone.clips(source.frames, result),)  # (steps, N, H, W, 3)
        return (source.frames,)  # (T, H, W, 3)

    def prepare(self, *pieces: Any) -> tuple[torch.Tensor, ...]:
        return (self.backbone.preprocess(pieces[0]),)  # (n, 3, S, S)

    def run(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.backbone.fixed_batch(tensors[0], self.batch_size)  # (n, C, K, K)


class FlowStream(StreamCompute):
    """Optical flow (T, 2, h, w) from each sampled frame to its successor: OpenCV whole, RAFT batched."""

    needs_next = True

    def __init__(self, models: Extractor) -> None:
        super().__init__(models)
        self.raft = models.flow if self.config.flow == "raft" else None
        self.batched = self.raft is not None
        self.batch_size = self.raft.batch_size if self.raft is not None else 0  # at most; see batch_for
        self.local = threading.local()  # an OpenCV estimator per thread (TV-L1 is stateful)

    @classmethod
    def check(cls, config: ExtractConfig) -> str | None:
        return None if config.flow != "none" else "needs an optical flow method (--flow tvl1, farneback or raft)"

    @classmethod
    def describe(cls, config: ExtractConfig) -> dict[str, Any]:
        return {"method": config.flow, "size": config.flow_size, "units": "pixels at flow_computed_at"}

    def compute(self, source: DecodedVideo, result: dict[str, Any]) -> np.ndarray:
        if self.raft is not None:
            flow = self.raft(source.flow_from, source.flow_to)  # (T, 2, h, w)
        else:
            first, second = self.inputs(source, result)
            flow = self._opencv().opencv(first, second)  # (T, 2, h, w)
        result["flow_pairs"], result["flow_computed_at"] = source.flow_pairs.tolist(), list(flow.shape[-2:])
        return flow

    def _opencv(self) -> FlowEstimator:
        if getattr(self.local, "flow", None) is None:
            self.local.flow = FlowEstimator(self.config.flow, size=self.config.flow_size)
        return self.local.flow

    def inputs(self, source: DecodedVideo, result: dict[str, Any]) -> tuple[Any, ...]:
        first, second = (self.raft or self._opencv()).prepare(source.flow_from, source.flow_to)  # (T, h, w, 3)
        result["flow_pairs"], result["flow_computed_at"] = source.flow_pairs.tolist(), list(first.shape[1:3])
        return first, second

    def batch_for(self, shape: tuple[int, ...]) -> int:
        return self.raft.batch_for(*shape[:2])  # shape (h, w, 3)

    def prepare(self, *pieces: Any) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(piece) for piece in pieces)  # (n, h, w, 3) each

    def run(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.raft.raft(*tensors)  # (n, 2, h, w)


class FlowCNNStream(RGBStream):
    """CNN conv cubes (T, C, K, K) of the flow rendered as an image (the flow-stream backbone)."""

    source = "flow"

    @classmethod
    def check(cls, config: ExtractConfig) -> str | None:
        return FlowStream.check(config)

    def cnn(self) -> FeatureExtractor:
        return self.models.flow_backbone

    def inputs(self, source: Any, result: dict[str, Any]) -> tuple[Any, ...]:
        return (self.render(source),)

    def render(self, flow: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(T, 2, h, w) flow (numpy, or RAFT's output on the device) -> (T, h, w, 3) uint8 images on the CNN's
        device: both paths render there (torch.hypot differs by ulps between CPU and GPU), so both store the same
        bits."""
        flow = torch.from_numpy(np.ascontiguousarray(flow)) if isinstance(flow, np.ndarray) else flow
        image = flow_to_image(upload(flow, self.backbone.device))  # (T, h, w, 3)
        assert isinstance(image, torch.Tensor)
        return image


def calibration_video(path: str, frames: int) -> np.ndarray:
    """The frames random-init batch norm is calibrated on: ``frames`` equally spaced over the video at ``path``, or
    all of a shorter one; a video that cannot be decoded fails each extraction naming it as the calibration video."""
    try:
        return decode_video(path, Sampling(frames=frames)).frames
    except DecodeError:
        try:
            return decode_video(path, Sampling()).frames  # fewer frames than asked: all of them
        except DecodeError as err:
            raise DecodeError(f"random weights are calibrated on {path}, which cannot be decoded: {err}") from None


class Extractor:
    """The models and stream computes one worker needs, built once: backbone for rgb (and flow_cnn), flow
    estimator, and the StreamCompute of each stream of the config, in order, sources first."""

    def __init__(self, config: ExtractConfig, runtime: Runtime) -> None:
        self.config, self.runtime = config, runtime
        self.streams = build_streams(self)

    @functools.cached_property
    def backbone(self) -> FeatureExtractor:
        """The rgb CNN (built on first use; random-init batch norm calibrated on config.calibration's video)."""
        config, calibration, calibration_frames = self.config, self.config.calibration, None
        if calibration is not None and calibration.path:
            calibration_frames = calibration_video(calibration.path, calibration.frames)
        if is_video_backbone(config.backbone):
            return build_video_backbone(config.backbone, config.weights.load, self.runtime.device, calibration_frames,
                                        config.size, config.clip_frames, config.clip_stride)
        return build_backbone(config.backbone, config.weights.load, self.runtime.device,
                              calibration_frames=calibration_frames, size=config.size, layer=config.layer)

    @functools.cached_property
    def flow_backbone(self) -> FeatureExtractor:
        """The flow-stream CNN: the rgb backbone itself, or one with weights of its own."""
        if self.config.flow_cnn_weights is None:
            return self.backbone
        return build_backbone(self.config.backbone, self.config.flow_cnn_weights.load, self.runtime.device,
                              size=self.config.size, layer=self.config.layer)

    @functools.cached_property
    def flow(self) -> FlowEstimator:
        """The flow estimator of config.flow (RAFT on the runtime's device)."""
        config, runtime = self.config, self.runtime
        return FlowEstimator(config.flow, device=runtime.device, weights=config.raft_weights.load,
                             size=config.flow_size, batch_size=runtime.batch_size)

    @functools.cached_property
    def device(self) -> str:
        """What computes this worker's features, as each video's result records it (``cpu``, ``cuda <GPU name>``)."""
        return device_label(self.runtime.device)

    def decode(self, record: VideoRecord) -> tuple[DecodedVideo, dict[str, Any]]:
        """Decode one video as the config samples it: (DecodedVideo, its result attributes but the streams')."""
        with_next = any(stream.needs_next for stream in self.streams.values())
        video = decode_video(record.path, self.config.sampling, with_next=with_next)
        result: dict[str, Any] = {
            "n_frames": len(video.indices),
            "frame_indices": video.indices.tolist(),
            "timestamps": video.timestamps.tolist(),
            "source": video.source,
            "device": self.device,
        }
        if record.boxes:
            boxes = read_boxes(record.boxes)  # (n_source_frames, 4)
            rows = np.full((len(video.indices), 4), np.nan, dtype=np.float32)
            inside = video.indices < len(boxes)
            rows[inside] = boxes[video.indices[inside]]
            result["boxes"] = rows.tolist()
        return video, result

    def __call__(self, record: VideoRecord) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Decode and compute every stream of one video, one after the other: (arrays, result attributes)."""
        video, result = self.decode(record)
        arrays: dict[str, np.ndarray] = {}
        for name, stream in self.streams.items():  # sources first
            arrays[name] = stream.compute(video if stream.source is None else arrays[stream.source], result)
        return arrays, result


#: What a stream spec's ``computed_by`` names: a StreamCompute subclass, or a function of the decoded frames.
Compute = type[StreamCompute] | Callable[[np.ndarray], np.ndarray]


def compute_of(spec: StreamSpec) -> Compute:
    """What ``spec.computed_by`` names: a StreamCompute subclass or a function of the decoded frames."""
    module, _, attribute = spec.computed_by.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"stream {spec.name}: cannot import its compute {spec.computed_by!r} ({err})") from None
    if not callable(found):
        raise ValueError(f"stream {spec.name}: {spec.computed_by!r} is neither a StreamCompute nor a function")
    return found


def _is_class(compute: Compute) -> TypeGuard[type[StreamCompute]]:
    return isinstance(compute, type) and issubclass(compute, StreamCompute)


def plan_streams(specs: Sequence[StreamSpec], config: ExtractConfig) -> tuple[StreamSpec, ...]:
    """``specs`` ordered so that each stream's source comes before it; a ValueError naming the stream and why
    ``config`` cannot extract it (its source not selected, no flow method, ...)."""
    by_name = {spec.name: spec for spec in specs}
    ordered: list[StreamSpec] = []
    for spec in specs:
        chain = [spec]
        while _is_class(compute := compute_of(chain[-1])) and compute.source is not None:
            if compute.source not in by_name:
                raise ValueError(f"stream {chain[-1].name} is computed from {compute.source}: select it too")
            if by_name[compute.source] in chain:
                raise ValueError(f"stream {spec.name}: its sources go round in a circle")
            chain.append(by_name[compute.source])
        for link in reversed(chain):
            why = compute.check(config) if _is_class(compute := compute_of(link)) else None
            if why:
                raise ValueError(f"stream {link.name} {why}")
            if link not in ordered:
                ordered.append(link)
    return tuple(ordered)


def describe_streams(specs: Sequence[StreamSpec], config: ExtractConfig) -> dict[str, dict[str, Any]]:
    """Each stream's StreamInfo fields (dims aside) in a store of ``config``, for store creation."""
    return {spec.name: compute.describe(config) if _is_class(compute := compute_of(spec)) else {} for spec in specs}


def build_streams(models: Extractor) -> dict[str, StreamCompute]:
    """The computes of the worker's config's streams (ordered by :func:`plan_streams`), by name."""
    streams: dict[str, StreamCompute] = {}
    for spec in plan_streams(models.config.stream_specs(), models.config):
        compute = compute_of(spec)
        if _is_class(compute):
            streams[spec.name] = compute(models)
        else:
            streams[spec.name] = FrameFunction(models, spec.name, compute)
    return streams
