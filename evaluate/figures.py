"""Figures people can look at: attention over the original frames (PNG strips, GIFs, MP4s), confusion matrices.

The frames come back from the source video through the store: every stored frame records its source
frame number, and :func:`stored_frames` decodes exactly those, upright, as extraction saw them. Each
attention map (K x K) is upsampled to the frame (bicubic), scaled so its maximum is 1 (unless the map is
nearly uniform, see :func:`heat_overlay`), coloured with the jet map (blue = little attention, red =
most) and blended over the frame, as in the papers' figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from glimpse.media.decode import decode_indices
from glimpse.media.encode import write_video

#: Heat colour over the frame: 0 shows the frame only, 1 the heat map only.
ALPHA = 0.5
#: A cell is drawn full red when it holds the map's maximum and at least this many times the uniform share.
FULL_HEAT = 4.0
#: Ground-truth box colour (RGB).
BOX_COLOR = (0, 255, 0)
#: Height in pixels of a text band (titles, run names).
BAND = 14


# ---------------------------------------------------------------------------------------------- frames


def decode_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """The source frames at presentation ``indices`` of ``path``, upright RGB (len(indices), H, W, 3) uint8.

    Frame numbers mean what the extraction stage counts (presentation order, corrupt packets left
    out), so a store's ``frame_indices`` give back the frames it was made from.
    """
    return decode_indices(path, indices)


def stored_frames(entry: Any, path: str | os.PathLike | None = None) -> np.ndarray:
    """The source frames (n_frames, H, W, 3) behind a store video's features (a done ``VideoEntry``).

    ``path`` replaces the recorded ``entry.path`` (a dataset moved since extraction).
    """
    if not entry.frame_indices:
        raise ValueError(f"video {entry.id!r}: the store records no frame indices (status {entry.status})")
    return decode_frames(path or entry.path, entry.frame_indices)


def pick_steps(n: int, count: int | None) -> np.ndarray:
    """``count`` equally spaced indices out of ``n`` (all of them when ``count`` is None or >= n)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, count)).astype(np.int64)


# ---------------------------------------------------------------------------------------------- overlays


def heat_overlay(frame: np.ndarray, attention: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """One frame (H, W, 3) uint8 with its attention map (K, K) upsampled, scaled and blended as jet.

    The map is divided by its maximum, or by FULL_HEAT times the uniform share 1 / K^2 when that is
    larger: a peaked map shows red where it peaks, a nearly uniform one stays blue-cyan all over
    instead of having its small wiggles stretched to the full colour range.
    """
    height, width = frame.shape[:2]
    peak = max(float(attention.max()), FULL_HEAT / attention.size)
    scaled = attention.astype(np.float32) / peak if peak > 0 else np.zeros_like(attention, dtype=np.float32)
    heat = np.clip(cv2.resize(scaled, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)  # (H, W)
    colour = cv2.applyColorMap((heat * 255).round().astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # (H, W, 3) RGB
    return ((1 - alpha) * frame + alpha * colour).round().astype(np.uint8)


def _draw_box(image: np.ndarray, box: Sequence[float] | None) -> None:
    """Draw a [x0, y0, x1, y1] box (x1 / y1 exclusive) in place; NaN or None draws nothing."""
    if box is None or np.isnan(np.asarray(box, dtype=np.float64)).any():
        return
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), BOX_COLOR, 1)


def _band(width: int, text: str) -> np.ndarray:
    """A white text band (BAND, width, 3) with ``text`` in black."""
    band = Image.new("RGB", (width, BAND), "white")
    ImageDraw.Draw(band).text((2, 1), text, fill="black", font=ImageFont.load_default())
    return np.asarray(band)


def _check(frames: np.ndarray, attention: np.ndarray, boxes: Any) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if attention.ndim != 3 or len(attention) != len(frames):
        raise ValueError(f"attention must be (T, K, K) with T = {len(frames)} frames, got {attention.shape}")
    if boxes is not None and len(boxes) != len(frames):
        raise ValueError(f"{len(boxes)} boxes for {len(frames)} frames")


def overlay_frames(frames: np.ndarray, attention: np.ndarray, boxes: Any = None, alpha: float = ALPHA) -> np.ndarray:
    """(T, H, W, 3) uint8: every frame with its map blended (:func:`heat_overlay`) and its box drawn."""
    frames, attention = np.asarray(frames), np.asarray(attention)
    _check(frames, attention, boxes)
    out = np.stack([heat_overlay(f, a, alpha) for f, a in zip(frames, attention, strict=True)])  # (T, H, W, 3)
    for image, box in zip(out, boxes if boxes is not None else [None] * len(out), strict=True):
        _draw_box(image, box)
    return out


def _grid(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tiles (T, H, W, 3) laid out ``columns`` per row, 2 px white gaps, missing tiles white."""
    t, h, w, _ = tiles.shape
    rows = -(-t // columns)
    gap = 2
    canvas = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return canvas


def _save_png(image: np.ndarray, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out_png, format="PNG")
    return out_png


def _with_title(image: np.ndarray, title: str | None) -> np.ndarray:
    return image if title is None else np.concatenate([_band(image.shape[1], title), image])


def attention_strip(frames: np.ndarray, attention: np.ndarray, out_png: str | Path, columns: int | None = None,
                    boxes: Any = None, title: str | None = None, alpha: float = ALPHA) -> Path:
    """A PNG of the frames (T, H, W, 3) with their attention (T, K, K) blended, ``columns`` per row
    (default: one row), ground-truth ``boxes`` (T, 4) drawn where given, ``title`` above."""
    tiles = overlay_frames(frames, attention, boxes, alpha)  # (T, H, W, 3)
    return _save_png(_with_title(_grid(tiles, columns or len(tiles)), title), out_png)


def compare_strips(frames: np.ndarray, runs: Mapping[str, np.ndarray], out_png: str | Path,
                   columns: int | None = None, boxes: Any = None, title: str | None = None,
                   alpha: float = ALPHA) -> Path:
    """One strip per run (name -> attention (T, K, K)) over the same frames, stacked with their names
    (e.g. regattn at lambda = 0 above lambda > 0, as Fig. 6 of the structured-attention paper)."""
    if not runs:
        raise ValueError(f"{out_png}: no runs to compare")
    blocks = []
    for name, attention in runs.items():
        grid = _grid(overlay_frames(frames, attention, boxes, alpha), columns or len(frames))
        blocks.append(np.concatenate([_band(grid.shape[1], name), grid]))
    return _save_png(_with_title(np.concatenate(blocks), title), out_png)


def animation_frames(frames: np.ndarray, attention: np.ndarray | Mapping[str, np.ndarray], boxes: Any = None,
                     alpha: float = ALPHA) -> np.ndarray:
    """The frames of an attention animation (T, H', W', 3) uint8: one per time step, its step number on top.

    ``attention`` is (T, K, K), or name -> (T, K, K) for several runs side by side (each under its name).
    """
    runs = dict(attention) if isinstance(attention, Mapping) else {"": attention}
    if not runs:
        raise ValueError("no attention to animate")
    panels = []
    for name, maps in runs.items():
        tiles = overlay_frames(frames, maps, boxes, alpha)  # (T, H, W, 3)
        if len(runs) > 1:
            tiles = np.stack([np.concatenate([_band(t.shape[1], name), t]) for t in tiles])
        panels.append(tiles)
    steps = np.concatenate(panels, axis=2) if len(panels) > 1 else panels[0]  # (T, H', W', 3)
    return np.stack([np.concatenate([_band(step.shape[1], f"{t + 1}/{len(steps)}"), step])
                     for t, step in enumerate(steps)])  # (T, BAND + H', W', 3)


def attention_gif(frames: np.ndarray, attention: np.ndarray | Mapping[str, np.ndarray], out_gif: str | Path,
                  fps: float = 4, boxes: Any = None, alpha: float = ALPHA) -> Path:
    """An animated GIF of :func:`animation_frames`, looping."""
    images = [Image.fromarray(step) for step in animation_frames(frames, attention, boxes, alpha)]
    out_gif = Path(out_gif)
    out_gif.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(out_gif, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, int(round(1000 / fps))), loop=0)
    return out_gif


def attention_mp4(frames: np.ndarray, attention: np.ndarray | Mapping[str, np.ndarray], out_mp4: str | Path,
                  fps: float = 4, boxes: Any = None, alpha: float = ALPHA) -> Path:
    """An H.264 MP4 of :func:`animation_frames` (padded white to even sizes, 4:2:0, so any player opens it)."""
    steps = animation_frames(frames, attention, boxes, alpha)  # (T, H', W', 3)
    _, height, width, _ = steps.shape
    steps = np.pad(steps, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), constant_values=255)
    return write_video(out_mp4, steps, fps=fps, codec="libx264")


def video_attention_figures(entry: Any, runs: Mapping[str, np.ndarray], out_dir: str | Path, steps: int | None = 8,
                            path: str | os.PathLike | None = None, fps: float = 4) -> dict[str, Path]:
    """Strip PNG (``steps`` equally spaced stored frames), GIF and MP4 (every stored frame) of one store video.

    ``runs``: name -> per-stored-frame attention (n_frames, K, K) (see
    :func:`evaluate.localization.frame_attention`); several runs are drawn side by side. Files are
    named after the video id ("/" -> "__"); ``path`` replaces the recorded source path.
    """
    frames = stored_frames(entry, path)  # (n_frames, H, W, 3)
    boxes = None if entry.boxes is None else np.asarray(entry.boxes, dtype=np.float64)  # (n_frames, 4)
    for name, maps in runs.items():
        if len(maps) != len(frames):
            raise ValueError(f"video {entry.id!r}: run {name!r} has {len(maps)} maps for {len(frames)} stored frames")
    chosen = pick_steps(len(frames), steps)
    stem = Path(out_dir) / entry.id.replace("/", "__")
    picked = {name: np.asarray(maps)[chosen] for name, maps in runs.items()}
    strip_boxes = None if boxes is None else boxes[chosen]
    if len(runs) == 1:
        (maps,) = picked.values()
        png = attention_strip(frames[chosen], maps, f"{stem}_attention.png", boxes=strip_boxes, title=entry.id)
    else:
        png = compare_strips(frames[chosen], picked, f"{stem}_attention.png", boxes=strip_boxes, title=entry.id)
    gif = attention_gif(frames, dict(runs), f"{stem}_attention.gif", fps=fps, boxes=boxes)
    mp4 = attention_mp4(frames, dict(runs), f"{stem}_attention.mp4", fps=fps, boxes=boxes)
    return {"strip": png, "gif": gif, "mp4": mp4}


# ---------------------------------------------------------------------------------------------- confusion


def confusion_png(matrix: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], out_png: str | Path,
                  title: str | None = None) -> Path:
    """The confusion matrix (rows true, columns predicted) as an image, each row normalized to sum 1;
    counts are written in the cells when there are at most 20 classes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(classes)
    if matrix.shape != (n, n):
        raise ValueError(f"{out_png}: confusion matrix is {matrix.shape}, expected {n} x {n}")
    rows = matrix.sum(1, keepdims=True)  # (C, 1)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)  # (C, C)
    side = min(30.0, max(4.0, 0.28 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    font = max(4, min(9, int(300 / max(n, 1))))
    ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=list(classes), fontsize=font)
    ax.set(xlabel="predicted", ylabel="true")
    if title:
        ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=font,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png", dpi=100)
    plt.close(fig)
    return out_png
