"""The project's one video encoder: numpy frames -> a real encoded video file through PyAV.

Tests, benchmarks, the synthetic dataset and the attention MP4s all write video through
:func:`write_video`.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: container suffix -> encoder used by :func:`write_video`
CODECS = {".mp4": "libx264", ".avi": "mpeg4", ".mkv": "libx264", ".mov": "libx264"}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25,
    codec: str | None = None,
    rotation: int = 0,
    times: Sequence[float] | None = None,
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB into ``path`` with PyAV.

    The codec defaults by suffix (H.264 for .mp4, MPEG-4 Part 2 for .avi). Odd frame sizes are
    encoded 4:4:4 (use ``codec="ffv1"`` in .mkv, or H.264); 4:2:0 needs even sizes. ``rotation``
    writes a display matrix (counter-clockwise degrees, as players apply it); ``times`` gives
    each frame's presentation time in seconds (variable frame rate). Encoding runs on one
    thread so the same frames always give the same bytes.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if times is not None and len(times) != len(frames):
        raise ValueError(f"{path}: {len(times)} times for {len(frames)} frames")
    height, width = frames.shape[1:3]
    codec = codec or CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: no default codec for suffix {path.suffix!r}; pass codec=")
    odd = bool(height % 2 or width % 2)
    if odd and codec == "mpeg4":
        raise ValueError(f"{path}: MPEG-4 needs even frame sizes, got {width}x{height}; use ffv1 or libx264")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height = width, height
        stream.pix_fmt = ("yuvj" if codec == "mjpeg" else "yuv") + ("444p" if odd else "420p")  # MJPEG is full range
        stream.thread_count = 1
        if times is not None:
            stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        if codec == "libx264":
            # mbtree off: with it, the same frames gave different bytes once the process had decoded
            # other videos (x264 reads stale memory there), even on one thread
            stream.options = {"crf": "16", "preset": "veryfast", "threads": "1", "mbtree": "0"}
        elif codec != "ffv1":
            stream.bit_rate = 4_000_000
        for number, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = int(round(times[number] * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
