"""Decoding and frame sampling with PyAV.

A video is read in two passes. :func:`scan` demuxes packets without decoding them (cheap) to
learn the exact frame count, every frame's presentation time and where the keyframes are.
:func:`decode_video` then decodes only up to the frames it needs, converting just those to RGB,
and seeks between keyframes when that decodes fewer frames than one sequential pass.

Pitfalls handled here (PyAV issue tracker): frame threading can hang when a decode loop stops
early with torchvision imported (1849), so decoding uses slice threading on one thread;
``reformat`` uses every core by default and is slower on small frames (2200), so conversion
asks for one thread; containers are always closed through ``with av.open(...)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import av
import av.logging
import numpy as np

from glimpse.errors import GlimpseError

#: Frames a seek is worth, in decode work: below this saving, decode sequentially.
SEEK_COST_FRAMES = 8

av.logging.set_level(av.logging.PANIC)  # FFmpeg's own warnings would flood worker logs


class DecodeError(GlimpseError, RuntimeError):
    """A video that cannot be decoded as asked; the message names the file and the reason."""


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video to keep.

    ``frames``: that many frames equally spaced over the whole video (the ConvLSTM report's 30);
    ``fps``: the video resampled to a fixed rate (Sharma et al.'s 30 and 6 fps runs), each output
    time taking the frame on screen at that moment; neither: every frame. ``max_frames`` caps the
    result (taking the first ones).
    """

    frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.fps is not None:
            raise ValueError("choose one of frames= (equally spaced) and fps= (fixed rate), not both")
        for name in ("frames", "fps", "max_frames"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def select(self, times: np.ndarray) -> np.ndarray:
        """Indices (into presentation order) of the frames to keep, given every frame's time in seconds."""
        n = len(times)
        if self.frames is not None:
            if n < self.frames:
                raise ValueError(f"the video has {n} frames, {self.frames} were asked for")
            chosen = np.round(np.linspace(0, n - 1, self.frames)).astype(np.int64)
        elif self.fps is not None:
            start, end = times[0], times[-1]
            targets = start + np.arange(int(np.floor((end - start) * self.fps + 1e-9)) + 1) / self.fps
            chosen = np.clip(np.searchsorted(times, targets + 1e-6, side="right") - 1, 0, n - 1)
        else:
            chosen = np.arange(n, dtype=np.int64)
        if self.max_frames is not None:
            chosen = chosen[: self.max_frames]
        return chosen


@dataclass(frozen=True)
class VideoScan:
    """What demuxing (no decoding) tells about a video's frames, in presentation order."""

    path: str
    times: np.ndarray  # (n,) seconds
    pts: np.ndarray  # (n,) in stream time base; -1 where the container gives none
    keyframes: np.ndarray  # (n,) bool
    width: int
    height: int
    codec: str
    fps: float
    corrupt_packets: int = 0

    @property
    def n_frames(self) -> int:
        return len(self.times)


@dataclass
class DecodedVideo:
    """Sampled frames of one video, upright, RGB."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    indices: np.ndarray  # (T,) source frame numbers
    timestamps: np.ndarray  # (T,) seconds
    scan: VideoScan
    flow_pairs: np.ndarray | None = None  # (T, 2) source frame numbers each flow goes from and to
    flow_from: np.ndarray | None = None  # (T, H, W, 3) uint8
    flow_to: np.ndarray | None = None  # (T, H, W, 3) uint8
    rotation: int = 0
    source: dict = field(default_factory=dict)


def _open(path: str):
    if not os.path.exists(path):
        if os.path.islink(path):
            raise DecodeError(f"{path}: a broken or looping symbolic link ({os.readlink(path)!r})")
        raise DecodeError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DecodeError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except PermissionError as exc:
        raise DecodeError(f"{path}: cannot read the file (permission denied)") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{path}: not a readable video container ({exc})") from exc
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(f"{path}: no video stream (streams found: {', '.join(kinds)})")
    return container


def scan(path: str | os.PathLike) -> VideoScan:
    """Demux ``path`` without decoding: frame count, presentation times and keyframes."""
    path = os.fspath(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        base = float(stream.time_base) if stream.time_base else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        rows, corrupt = [], 0
        try:
            for number, packet in enumerate(container.demux(stream)):
                if packet.size == 0 or packet.is_corrupt:  # a cut or damaged packet is no trustworthy frame
                    corrupt += packet.is_corrupt
                    continue
                pts = packet.pts if packet.pts is not None else packet.dts
                rows.append((pts if pts is not None else -1, bool(packet.is_keyframe), number))
        except av.error.FFmpegError as exc:
            if not rows:
                raise DecodeError(f"{path}: cannot read packets ({exc})") from exc
        if not rows:
            raise DecodeError(f"{path}: the video stream holds no frames")
        if all(pts >= 0 for pts, _, _ in rows):
            rows.sort(key=lambda r: r[0])
            pts = np.array([r[0] for r in rows], dtype=np.int64)
            times = (pts - pts[0]) * base if base else np.arange(len(rows)) / rate
        else:
            pts = np.full(len(rows), -1, dtype=np.int64)
            times = np.arange(len(rows)) / rate
        keyframes = np.array([r[1] for r in rows], dtype=bool)
        keyframes[0] = True
        width, height = stream.codec_context.width, stream.codec_context.height
        return VideoScan(path, np.asarray(times, dtype=np.float64), pts, keyframes, width, height,
                         stream.codec_context.name, rate, corrupt)


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded image upright as players (ffmpeg's autorotate) show it; ``rotation`` in CCW degrees."""
    turns = (rotation // 90) % 4  # np.rot90 turns counter-clockwise, as the display matrix asks
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def _upright_stack(decoded: dict[int, tuple[np.ndarray, int]], which: np.ndarray, rotation: int) -> np.ndarray:
    """The decoded frames at indices ``which``, turned upright: (len(which), H, W, 3) uint8."""
    return np.stack([_upright(decoded[int(i)][0], rotation) for i in which])


def _plan_segments(needed: np.ndarray, keyframes: np.ndarray) -> list[tuple[int, int]] | None:
    """(keyframe, last needed) decode segments when seeking beats one sequential pass, else None."""
    key_positions = np.flatnonzero(keyframes)
    starts = key_positions[np.searchsorted(key_positions, needed, side="right") - 1]
    segments: list[list[int]] = []
    for start, index in zip(starts, needed, strict=True):
        if segments and start <= segments[-1][1] + 1:
            segments[-1][1] = int(index)
        else:
            segments.append([int(start), int(index)])
    seek_cost = sum(end - start + 1 for start, end in segments) + SEEK_COST_FRAMES * (len(segments) - 1)
    if len(segments) <= 1 or seek_cost >= needed[-1] + 1:
        return None
    return [(start, end) for start, end in segments]


def _decode_indices(path: str, info: VideoScan, needed: np.ndarray, threads: int) -> dict[int, tuple[np.ndarray, int]]:
    """Decode the frames at presentation indices ``needed``: index -> (RGB image, rotation)."""
    wanted = set(int(i) for i in needed)
    by_pts = {int(p): i for i, p in enumerate(info.pts)} if info.pts[0] >= 0 else None
    segments = _plan_segments(needed, info.keyframes) if by_pts else None
    out: dict[int, tuple[np.ndarray, int]] = {}
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = threads
        for start, end in segments or [(0, int(needed[-1]))]:
            if segments:
                container.seek(int(info.pts[start]), stream=stream, backward=True, any_frame=False)
            position = start - 1
            try:
                for frame in container.decode(stream):
                    if frame.is_corrupt:
                        continue
                    if by_pts is None:
                        position += 1
                    elif frame.pts is not None and int(frame.pts) in by_pts:
                        position = by_pts[int(frame.pts)]
                    else:
                        continue  # a frame the scan did not index (its packet was corrupt)
                    if position in wanted and position not in out:
                        image = frame.to_ndarray(format="rgb24", threads=1)
                        out[position] = (image, int(frame.rotation or 0))
                    if position >= end:
                        break
            except av.error.FFmpegError as exc:
                missing = sorted(wanted - set(out))
                raise DecodeError(f"{path}: decoding failed before frame {missing[0]} ({exc})") from exc
    missing = sorted(wanted - set(out))
    if missing and segments:  # a seek that did not land where the index says: decode sequentially instead
        return _decode_indices(path, VideoScan(**{**info.__dict__, "pts": np.full_like(info.pts, -1)}), needed, threads)
    if missing:
        raise DecodeError(
            f"{path}: the container lists {info.n_frames} frames but only {len(out) and max(out) + 1} decoded "
            f"(truncated or corrupt; first missing frame {missing[0]})"
        )
    return out


def decode_indices(path: str | os.PathLike, indices: np.ndarray | list[int], threads: int = 1) -> np.ndarray:
    """The frames at presentation ``indices`` of ``path`` (numbered as :func:`scan` counts them), upright RGB.

    A store's ``frame_indices`` give back exactly the frames it was made from. Returns
    (len(indices), H, W, 3) uint8.
    """
    path = os.fspath(path)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0:
        raise DecodeError(f"{path}: frame indices must be a non-empty list, got shape {indices.shape}")
    info = scan(path)
    if indices.min() < 0 or indices.max() >= info.n_frames:
        raise DecodeError(f"{path}: frame {int(indices.max())} asked for, the video has {info.n_frames} frames "
                          "(was the file replaced since extraction?)")
    decoded = _decode_indices(path, info, np.unique(indices), threads)
    return _upright_stack(decoded, indices, decoded[int(indices[0])][1])


def decode_video(
    path: str | os.PathLike, sampling: Sampling, with_next: bool = False, threads: int = 1
) -> DecodedVideo:
    """Decode the frames ``sampling`` selects from ``path``, upright RGB uint8.

    With ``with_next``, also the pair of source frames each sampled frame's flow is computed
    from: the frame itself and the next one (for the video's last frame, the two last frames).
    """
    path = os.fspath(path)
    info = scan(path)
    try:
        indices = sampling.select(info.times)
    except ValueError as exc:
        raise DecodeError(f"{path}: {exc}") from exc
    if len(indices) == 0:
        raise DecodeError(f"{path}: sampling selected no frames")
    pairs = np.empty((0, 2), dtype=np.int64)
    if with_next:
        if info.n_frames < 2:
            raise DecodeError(f"{path}: optical flow needs 2 frames, the video has {info.n_frames}")
        start = np.minimum(indices, info.n_frames - 2)
        pairs = np.stack([start, start + 1], axis=1)  # (T, 2)
    needed = np.unique(np.concatenate([indices, pairs.ravel()]))
    decoded = _decode_indices(path, info, needed, threads)
    rotation = decoded[int(indices[0])][1]
    frames = _upright_stack(decoded, indices, rotation)
    video = DecodedVideo(frames, indices, info.times[indices], info, rotation=rotation)
    if with_next:
        video.flow_pairs = pairs
        video.flow_from = _upright_stack(decoded, pairs[:, 0], rotation)
        video.flow_to = _upright_stack(decoded, pairs[:, 1], rotation)
    video.source = {
        "frames": info.n_frames,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
        "rotation": rotation,
        "corrupt_packets": info.corrupt_packets,
    }
    return video
