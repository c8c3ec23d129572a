"""What an extraction computes and how it runs: the typed values every extraction module shares.

:class:`ExtractConfig` decides the stored features (its hash names the store's content); :class:`Runtime` says how
a worker runs it and never changes a value. Weights and the calibration video are named by their identity in the
config, and carry where they are on this machine beside it (not compared, not hashed), so that no second object
holds a path twin of a config value. :class:`Outcome` is what a task reports of each video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glimpse.errors import GlimpseError
from glimpse.media.decode import DecodeError, Sampling
from glimpse.store.schema import STREAMS, StreamSpec, stream_spec

#: Task outcomes besides done / failed: another run holds the video, or finished it meanwhile.
CLAIMED, SKIPPED = "claimed", "skipped"


@dataclass(frozen=True)
class WeightsRef:
    """Weights by their identity (``"none"``, a torchvision enum name, ``"sha256:<hex>"``: what a config hashes) and
    by what names them on this machine (``"imagenet"``, ``"none"``, ``"default"`` or a file: how a worker loads them).
    Two references to the same file at different paths are equal."""

    identity: str
    source: str = field(default="", compare=False)

    @property
    def load(self) -> str:
        """What a builder loads: the source where one was given, else the identity itself (``"none"``)."""
        return self.source or self.identity


@dataclass(frozen=True)
class Calibration:
    """The video (its id, and its file on this machine) whose first ``frames`` frames calibrate random-init batch
    norm; only the id and the frame count are part of the config."""

    video: str
    frames: int
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what the stored features are. Its hash names the store's content.

    Runtime choices that do not change the features (device, batch size, workers, scheduler) are not part of it.
    ``manifest`` names the dataset's content (:func:`glimpse.extract.api.manifest_digest`), so that another dataset,
    another split seed or changed source files never share a store. ``flow_cnn_weights`` None: the flow-stream CNN is
    the rgb backbone itself. ``flow_stack`` and ``flow_stack_weights`` (the flow_stack stream's L and weights file)
    are hashed only when that stream is extracted. ``streams`` None: rgb, and flow and
    flow_cnn with a flow method; otherwise the registry entries as the client resolved them (a stream registered
    at run time in the client reaches the workers this way).
    """

    dataset: str
    backbone: str = "googlenet"
    layer: str | None = None  # the node the backbone is cut at; None: its registered layer
    weights: WeightsRef = WeightsRef("none")
    size: int = 224
    frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    clip_frames: int | None = None  # a video backbone's frames per clip (None: a 2D backbone, a step per frame)
    clip_stride: int | None = None  # decoded frames from one clip's start to the next
    flow: str = "none"
    flow_cnn_weights: WeightsRef | None = None
    raft_weights: WeightsRef = WeightsRef("none")
    flow_size: int | None = None
    flow_stack: int = 10  # flow fields per flow_stack input (two-stream networks' L)
    flow_stack_weights: WeightsRef | None = None  # None: cross-modality initialisation from the rgb weights
    calibration: Calibration | None = None
    streams: tuple[StreamSpec, ...] | None = None
    manifest: str | None = None  # digest of the dataset's classes, videos, labels, splits and source fingerprints

    @property
    def sampling(self) -> Sampling:
        return Sampling(frames=self.frames, fps=self.fps, max_frames=self.max_frames)

    @property
    def stream_names(self) -> tuple[str, ...]:
        """The streams this config extracts."""
        return tuple(spec.name for spec in self.streams) if self.streams else default_streams(self.flow)

    def stream_specs(self) -> tuple[StreamSpec, ...]:
        """The registry entries of :attr:`stream_names` (a SchemaError names an unknown one)."""
        return self.streams or tuple(stream_spec(name) for name in self.stream_names)

    def to_dict(self) -> dict[str, Any]:
        """The config as stored and hashed: identities only; ``layer``, the clips and ``streams`` only when not the
        default (older stores keep their hash)."""
        out: dict[str, Any] = {
            "dataset": self.dataset, "backbone": self.backbone, "weights": self.weights.identity, "size": self.size,
            "frames": self.frames, "fps": self.fps, "max_frames": self.max_frames, "flow": self.flow,
            "flow_cnn_weights": "same" if self.flow_cnn_weights is None else self.flow_cnn_weights.identity,
            "raft_weights": self.raft_weights.identity, "flow_size": self.flow_size,
            "calibration": None if self.calibration is None else [self.calibration.video, self.calibration.frames],
        }
        if self.layer is not None:
            out["layer"] = self.layer
        if self.clip_frames is not None:
            out["clip_frames"], out["clip_stride"] = self.clip_frames, self.clip_stride
        if self.streams is not None:
            out["streams"] = list(self.stream_names)
        if self.manifest is not None:
            out["manifest"] = self.manifest
        if "flow_stack" in self.stream_names:
            out["flow_stack"] = {"length": self.flow_stack, "weights": self.flow_stack_init}
        return out

    @property
    def flow_stack_init(self) -> str:
        """What the flow_stack network's weights are: its file's identity, or ``cross-modality:<rgb identity>``."""
        weights = self.flow_stack_weights
        return "cross-modality:" + self.weights.identity if weights is None else weights.identity


def default_streams(flow: str) -> tuple[str, ...]:
    """The streams extracted when none are named: rgb, and flow and flow_cnn with a flow method."""
    return ("rgb",) if flow == "none" else ("rgb", "flow", "flow_cnn")


def registered_streams(names: tuple[str, ...]) -> tuple[StreamSpec, ...]:
    """The registry entries of ``names``, in registry order."""
    return tuple(spec for name, spec in STREAMS.items() if name in names)


@dataclass(frozen=True)
class Runtime:
    """How a worker runs an extraction: never part of the config hash."""

    device: str = "cpu"
    batch_size: int = 32
    threads: int = 1  # torch threads per task
    pipelined: bool = True  # decode threads feed batches across videos (False: each video in sequence)
    group: int | None = None  # videos per Dask task [pipelined: a few per worker; sequential: 1]
    decode_threads: int = 2  # threads decoding ahead of the CNN in each worker (extract_dataset: the worker's cores)
    codec: str | None = None  # how a new store's chunks are stored (store.layout.CODECS); None: zstd, or the store's
    claims: str = "flock"  # where workers claim videos: flock, or scheduler (store.claims; the client resolved auto)


@dataclass(frozen=True)
class Outcome:
    """What a task did with one video: its status (done, failed, claimed, skipped), why it failed, its frames, and
    whether its failure is recorded in the store (a failure the store could not take stops the run)."""

    id: str
    status: str
    error: str | None = None
    frames: int = 0
    recorded: bool = True


class UnrecordedFailure(GlimpseError, RuntimeError):
    """A video failed and the store could not record it: the run stops, since the store no longer says what
    happened to each video."""


def failure_reason(exc: BaseException, path: str) -> str:
    """One line naming the file and why its extraction failed."""
    return str(exc) if isinstance(exc, DecodeError) else f"{path}: {type(exc).__name__}: {exc}"
