"""The one place where glimpse's store schema is defined: the contract between the stages.

Everything that crosses the boundary between the stages is described here as frozen dataclasses with
``to_dict`` / ``from_dict`` (what is stored is their JSON form):

- :class:`VideoRecord`  one video of a dataset, as its adapter reads it (the input of extraction);
- :class:`StreamSpec`   a kind of stream glimpse knows (name, dims, dtype, the extraction code that computes it),
                        kept in the :data:`STREAMS` registry: adding a stream is one :func:`register_stream` entry
                        plus the function that computes it;
- :class:`StreamInfo`   one stream as a store holds it (dims, per-frame shape, backbone / flow method);
- :class:`StoreMeta`    the root metadata of a store (schema version, dataset, classes, multi_label, config, ...);
- :class:`ManifestRow`  a video's row of the manifest, fixed at store creation;
- :class:`VideoResult`  what extraction made of one video (status, frames, timestamps, boxes, flow pairs, ...);
- :class:`VideoEntry`   a manifest row and its result together: what training and evaluation read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from glimpse.errors import GlimpseError
from glimpse.store.layout import CODECS, DEFAULT_CODEC

#: Version 2 added ``multi_label`` to the root metadata and reads back ``flow_pairs`` / ``flow_computed_at`` of each
#: video. Version 3 moved the manifest out of the root attributes into the ``manifest/`` group (store/manifest.py)
#: and added the video index ``index/`` (store/index.py). ``python -m glimpse.store upgrade`` brings older stores
#: up to date.
SCHEMA_VERSION = 3

#: Membership of a video in one split of its dataset.
TRAIN, TEST, UNUSED = "train", "test", "unused"
SPLIT_ROLES = (TRAIN, TEST, UNUSED)


class SchemaError(GlimpseError, ValueError):
    """A record or store does not follow the schema; the message says which field and why."""


class StoreError(GlimpseError, RuntimeError):
    """A path that is no store, a store of another schema, or a read of something not there."""


def _known(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls``; a SchemaError naming the first unknown or missing one."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SchemaError(f"{what}: unknown field {unknown[0]!r} (fields are {sorted(names)})")
    return dict(data)


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset, as its adapter reads it from the official layout.

    ``id`` is unique within the dataset and stable across machines (the video's path relative
    to the dataset root, without extension). ``labels`` holds class indices into the
    dataset's class list: one for single-label datasets, several for Hollywood2.
    ``splits`` maps an official split name ("1", "2", ...) to "train", "test" or "unused".
    ``boxes`` is the path of a per-frame ground-truth box file where the dataset has them. ``fingerprint`` is the
    source file's (:func:`glimpse.files.fingerprint`), filled in by extraction: part of the store's identity.
    """

    id: str
    path: str
    labels: tuple[int, ...]
    splits: Mapping[str, str]
    group: str | None = None
    boxes: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise SchemaError(f"video record for {self.path!r} has an empty id")
        if not self.labels or any(int(lab) < 0 for lab in self.labels):
            raise SchemaError(f"video {self.id!r}: labels must be non-negative class indices, got {self.labels}")
        for split, role in self.splits.items():
            if role not in SPLIT_ROLES:
                raise SchemaError(f"video {self.id!r}: split {split!r} has role {role!r}, not one of {SPLIT_ROLES}")

    @property
    def label(self) -> int:
        """The primary (first) class index; for single-label datasets, the label."""
        return self.labels[0]


#: Status of a video inside a store ("unreadable": its own metadata is broken, see store verify).
PENDING, WRITING, DONE, FAILED, UNREADABLE = "pending", "writing", "done", "failed", "unreadable"



@dataclass(frozen=True)
class StreamSpec:
    """A kind of stream: its per-video array is (frames, ...) with these ``dims``, stored as ``dtype``.

    ``computed_by`` is the extraction code that makes it, as "module:attribute" (the store never imports it): a
    ``glimpse.extract.streams.StreamCompute`` subclass, or a plain function of a video's decoded frames,
    (T, H, W, 3) uint8 -> (T, ...) array.
    """

    name: str
    dims: tuple[str, ...]
    computed_by: str
    description: str = ""
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise SchemaError(f"stream name {self.name!r} must be a non-empty name without '/'")
        if not self.dims or self.dims[0] != "frame":
            raise SchemaError(f"stream {self.name!r}: dims {self.dims} must start with 'frame'")
        if self.dtype != "float16":
            raise SchemaError(f"stream {self.name!r}: dtype {self.dtype!r}; stores hold float16 only")


#: Every stream a store may hold (each only if it was extracted), by name.
STREAMS: dict[str, StreamSpec] = {}


def register_stream(spec: StreamSpec) -> StreamSpec:
    """Add ``spec`` to :data:`STREAMS` (a second spec of the same name is refused); returns it."""
    if spec.name in STREAMS and STREAMS[spec.name] != spec:
        raise SchemaError(f"stream {spec.name!r} is already registered as {STREAMS[spec.name]}")
    STREAMS[spec.name] = spec
    return spec


def stream_spec(name: str) -> StreamSpec:
    """The registered stream ``name``, or a SchemaError naming the registered ones."""
    try:
        return STREAMS[name]
    except KeyError:
        raise SchemaError(f"unknown stream {name!r}; streams are {sorted(STREAMS)}") from None


register_stream(StreamSpec("rgb", ("frame", "channel", "y", "x"), "glimpse.extract.streams:RGBStream",
                           "CNN conv feature cubes of the decoded frames (C, K, K)"))
register_stream(StreamSpec("flow", ("frame", "component", "y", "x"), "glimpse.extract.streams:FlowStream",
                           "optical flow to the next frame (2, H, W): x (right), y (down), in pixels"))
register_stream(StreamSpec("flow_cnn", ("frame", "channel", "y", "x"), "glimpse.extract.streams:FlowCNNStream",
                           "CNN conv feature cubes of the flow rendered as an image (C, K, K)"))
register_stream(StreamSpec("flow_stack", ("frame", "channel", "y", "x"), "glimpse.extract.flow_stack:FlowStackStream",
                           "CNN conv feature cubes of L stacked flows (2L channels) from each frame (C, K, K)"))


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class StreamInfo:
    """One stream as a store holds it: ``dims`` from the registry, the per-frame shape where every video shares it
    (CNN cubes; raw flow varies with the video's size), and what made it (backbone and layer, or flow method)."""

    dims: tuple[str, ...]
    frame_shape: tuple[int, ...] | None = None
    backbone: str | None = None
    layer: str | None = None
    method: str | None = None
    size: int | None = None
    units: str | None = None
    clip: tuple[int, int] | None = None  # a video backbone's clips: frames per clip, stride (None: a step per frame)

    def to_dict(self) -> dict[str, Any]:
        out = _drop_none({f.name: getattr(self, f.name) for f in fields(self)})
        out["dims"] = list(self.dims)
        if self.frame_shape is not None:
            out["frame_shape"] = list(self.frame_shape)
        if self.clip is not None:
            out["clip"] = list(self.clip)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamInfo:
        data = _known(cls, data, "stream description")
        shape = data.get("frame_shape")
        clip = data.get("clip")
        return cls(**{**data, "dims": tuple(data["dims"]), "clip": None if clip is None else (int(clip[0]),
                                                                                             int(clip[1])),
                      "frame_shape": None if shape is None else tuple(int(x) for x in shape)})

    @classmethod
    def of(cls, name: str, **described: Any) -> StreamInfo:
        """The description of registered stream ``name`` with the given fields (dims from the registry)."""
        return cls.from_dict({**described, "dims": stream_spec(name).dims})


@dataclass(frozen=True)
class ManifestRow:
    """A video's row of the manifest: the part of its description fixed at store creation."""

    id: str
    key: str
    path: str
    labels: tuple[int, ...]
    splits: Mapping[str, str]
    group: str | None = None
    fingerprint: str | None = None  # of the source file at extraction (stores made before it was recorded: None)

    @property
    def label(self) -> int:
        """The primary (first) class index."""
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "key": self.key, "path": self.path, "labels": list(self.labels),
               "splits": dict(self.splits), "group": self.group}
        return out if self.fingerprint is None else {**out, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestRow:
        data = _known(cls, data, "manifest row")
        return cls(**{**data, "labels": tuple(int(x) for x in data["labels"]), "splits": dict(data["splits"])})


@dataclass(frozen=True)
class StoreMeta:
    """The root metadata of a store (``attributes["glimpse"]`` of its root group).

    ``multi_label`` says whether a video may have several classes (Hollywood2), as the dataset adapter declared
    it at extraction. ``source`` records where the dataset root and weights files were (not part of the config
    hash) so that ``store repair`` can extract again. ``codec`` names how chunks are written
    (:data:`store.layout.CODECS`): a storage choice that leaves the values, and so the config hash, unchanged.
    """

    dataset: str
    classes: tuple[str, ...]
    config: Mapping[str, Any]
    config_hash: str
    streams: Mapping[str, StreamInfo]
    videos: tuple[ManifestRow, ...] = ()  # stored in the manifest/ group, not in the root attributes
    multi_label: bool = False
    schema_version: int = SCHEMA_VERSION
    created: str | None = None
    created_by: str | None = None
    backbone: str | None = None
    layer: str | None = None
    weights: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    imported_from: str | None = None
    codec: str = DEFAULT_CODEC  # how chunks are stored (store.layout.CODECS); not part of the config hash

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(classes=list(self.classes), config=dict(self.config), versions=dict(self.versions),
                   source=dict(self.source), streams={n: s.to_dict() for n, s in self.streams.items()},
                   videos=[row.to_dict() for row in self.videos])
        return out

    def head_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the manifest: the root attributes of a schema 3 store."""
        out = self.to_dict()
        del out["videos"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreMeta:
        data = _known(cls, data, "store metadata")
        required = ("dataset", "classes", "config", "config_hash", "streams")
        missing = [name for name in required if name not in data]
        if missing:
            raise SchemaError(f"store metadata: field {missing[0]!r} is missing")
        if data.get("codec", DEFAULT_CODEC) not in CODECS:
            raise SchemaError(f"store metadata: codec {data['codec']!r} is none of {', '.join(CODECS)}")
        return cls(**{**data, "classes": tuple(data["classes"]),
                      "streams": {n: StreamInfo.from_dict(s) for n, s in data["streams"].items()},
                      "videos": tuple(ManifestRow.from_dict(row) for row in data.get("videos", ())),
                      "multi_label": bool(data.get("multi_label", False))})


@dataclass(frozen=True)
class VideoResult:
    """What extraction made of one video (``attributes["video"]`` of its group, written after its arrays).

    ``frame_indices`` are source frame numbers (0-based, decode order) of the stored frames, ``timestamps`` their
    presentation times in seconds (None where unknown, e.g. an HDF5 import). ``boxes`` holds one
    ``[x0, y0, x1, y1]`` source-pixel box per stored frame where the dataset has ground truth (NaN where a frame
    has none). ``checksums`` maps each stream to the sha256 of its float16 bytes. ``flow_pairs`` are the two source
    frames each stored flow goes from and to, and ``flow_computed_at`` the (H, W) it was computed at. ``device``
    names what computed its features (``cpu``, or ``cuda`` and the GPU's name), so that a store resumed on
    another machine says which videos came from where (stores written before it was recorded: None).
    A video backbone's step is a clip: ``frame_indices`` and ``timestamps`` give its middle frame, ``step_frames``
    and ``step_timestamps`` the first and last frames it covers (None for a step per frame: see :meth:`spans`).
    """

    status: str = PENDING
    error: str | None = None
    n_frames: int = 0
    frame_indices: tuple[int, ...] = ()
    timestamps: tuple[float | None, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)
    flow_pairs: tuple[tuple[int, int], ...] | None = None
    flow_computed_at: tuple[int, int] | None = None
    device: str | None = None
    step_frames: tuple[tuple[int, int], ...] | None = None  # a video backbone's steps: first and last frame covered
    step_timestamps: tuple[tuple[float | None, float | None], ...] | None = None  # and their times

    def spans(self) -> tuple[tuple[int, int], ...]:
        """The first and last source frame each stored step covers: a clip's (``step_frames``), or the frame itself
        (stores of 2D backbones, and stores made before steps were recorded)."""
        return self.step_frames if self.step_frames is not None else tuple((i, i) for i in self.frame_indices)

    def time_spans(self) -> tuple[tuple[float | None, float | None], ...]:
        """The times of :meth:`spans` (seconds; None where unknown)."""
        return self.step_timestamps if self.step_timestamps is not None else tuple((t, t) for t in self.timestamps)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: tuples become lists, NaN becomes null (JSON has no NaN)."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoResult:
        data = _known(cls, data, "video result")
        boxes, pairs, at = data.get("boxes"), data.get("flow_pairs"), data.get("flow_computed_at")
        steps, times = data.get("step_frames"), data.get("step_timestamps")
        nan = float("nan")
        return cls(**{
            **data,
            "n_frames": int(data.get("n_frames", 0)),
            "frame_indices": tuple(int(i) for i in data.get("frame_indices", ())),
            "timestamps": tuple(None if t is None else float(t) for t in data.get("timestamps", ())),
            "boxes": None if boxes is None else tuple(tuple(nan if v is None else float(v) for v in b) for b in boxes),
            "source": dict(data.get("source") or {}),
            "checksums": dict(data.get("checksums") or {}),
            "flow_pairs": None if pairs is None else tuple((int(a), int(b)) for a, b in pairs),
            "flow_computed_at": None if at is None else (int(at[0]), int(at[1])),
            "step_frames": None if steps is None else tuple((int(a), int(b)) for a, b in steps),
            "step_timestamps": None if times is None else tuple(tuple(None if t is None else float(t) for t in pair)
                                                                for pair in times),
        })


def _json_safe(value: Any) -> Any:
    """Attributes are JSON: numpy arrays and scalars become Python lists and numbers, NaN becomes null."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def _values(record: Any, cls: type) -> dict[str, Any]:
    """The fields of dataclass ``cls`` as ``record`` holds them."""
    return {f.name: getattr(record, f.name) for f in fields(cls)}


@dataclass(frozen=True)
class VideoEntry(VideoResult, ManifestRow):
    """One video as a store holds it: its :class:`ManifestRow` (id, key, path, labels, splits, group) and its
    :class:`VideoResult` (status, error, frames, timestamps, boxes, ...) as one record, what training and
    evaluation read. :attr:`row` and :attr:`result` give the two parts back; the stored forms are theirs.
    """

    @property
    def row(self) -> ManifestRow:
        """The manifest row part."""
        return ManifestRow(**_values(self, ManifestRow))

    @property
    def result(self) -> VideoResult:
        """The extraction result part."""
        return VideoResult(**_values(self, VideoResult))

    def to_dict(self) -> dict[str, Any]:
        """The row's and the result's JSON forms in one mapping."""
        return {**self.row.to_dict(), **self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoEntry:
        data = _known(cls, data, "video entry")
        in_row = {f.name for f in fields(ManifestRow)}
        return cls.of(ManifestRow.from_dict({k: v for k, v in data.items() if k in in_row}),
                      VideoResult.from_dict({k: v for k, v in data.items() if k not in in_row}))

    @classmethod
    def of(cls, row: ManifestRow, result: VideoResult | None) -> VideoEntry:
        """A manifest row and its result (None: nothing written yet, pending) as one entry."""
        return cls(**{**_values(row, ManifestRow), "splits": dict(row.splits)},
                   **_values(result or VideoResult(), VideoResult))
