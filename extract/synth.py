"""Synthetic action dataset: real encoded videos of one moving object among distractors.

The one video encoder of the project lives here too (:func:`write_video`); tests and the
generator both use it.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

#: container suffix -> encoder used by :func:`write_video`
CODECS = {".mp4": "libx264", ".avi": "mpeg4", ".mkv": "libx264", ".mov": "libx264"}


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25, codec: str | None = None) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB into ``path`` with PyAV; H and W must be even.

    The codec defaults by suffix (H.264 for .mp4, MPEG-4 Part 2 for .avi). Encoding runs on
    one thread so the same frames always give the same bytes.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: yuv420p needs even frame sizes, got {width}x{height}")
    codec = codec or CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: no default codec for suffix {path.suffix!r}; pass codec=")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "veryfast", "threads": "1"}
        else:
            stream.bit_rate = 4_000_000
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


import click  # noqa: E402


@click.command("synth", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Write the synthetic action dataset."""
    raise click.ClickException("the synthetic generator is not built yet")
