"""The one place where glimpse's store schema is defined.

Everything that crosses the boundary between the stages is described here as frozen
dataclasses: a dataset adapter produces :class:`VideoRecord` s, the extraction stage writes
them (plus features) into a store, and training / evaluation read them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from glimpse.errors import GlimpseError

SCHEMA_VERSION = 1

#: Streams a store may hold, each only if it was extracted.
STREAMS = ("rgb", "flow", "flow_cnn")

#: Membership of a video in one split of its dataset.
TRAIN, TEST, UNUSED = "train", "test", "unused"
SPLIT_ROLES = (TRAIN, TEST, UNUSED)


class SchemaError(GlimpseError, ValueError):
    """A record or store does not follow the schema; the message says which field and why."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset, as its adapter reads it from the official layout.

    ``id`` is unique within the dataset and stable across machines (the video's path relative
    to the dataset root, without extension). ``labels`` holds class indices into the
    dataset's class list: one for single-label datasets, several for Hollywood2.
    ``splits`` maps an official split name ("1", "2", ...) to "train", "test" or "unused".
    ``boxes`` is the path of a per-frame ground-truth box file where the dataset has them.
    """

    id: str
    path: str
    labels: tuple[int, ...]
    splits: Mapping[str, str]
    group: str | None = None
    boxes: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

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

#: Dimension names of each stream's per-video array, written into the array metadata.
STREAM_DIMS = {
    "rgb": ("frame", "channel", "y", "x"),
    "flow": ("frame", "component", "y", "x"),
    "flow_cnn": ("frame", "channel", "y", "x"),
}


@dataclass(frozen=True)
class VideoEntry:
    """One video as a store holds it: the dataset record plus what extraction made of it.

    ``frame_indices`` are source frame numbers (0-based, in decode order) of the stored frames and
    ``timestamps`` their presentation times in seconds. ``boxes`` holds one ``[x0, y0, x1, y1]``
    source-pixel box per stored frame where the dataset has ground truth (NaN where a frame has
    none). ``checksums`` maps each stream to the sha256 of its float16 bytes, recorded at write time.
    """

    id: str
    key: str
    path: str
    labels: tuple[int, ...]
    splits: Mapping[str, str]
    group: str | None = None
    status: str = PENDING
    error: str | None = None
    n_frames: int = 0
    frame_indices: tuple[int, ...] = ()
    timestamps: tuple[float, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    source: Mapping[str, object] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> int:
        """The primary (first) class index."""
        return self.labels[0]
