"""Figures people can look at: attention over the original frames (PNG strips, GIFs, MP4s), confusion matrices.

The frames come back from the source video through the store: every stored frame records its source
frame number, and :func:`stored_frames` decodes exactly those, upright, as extraction saw them. Each
attention map (K x K) is upsampled to the frame (bicubic), divided by one peak shared by all the maps of
a figure (their largest value, or FULL_HEAT times the uniform share if larger, see :func:`heat_overlay`),
coloured with the jet map (blue = little attention, red = the peak) and blended over the frame, as in the
papers' figures. A strip is at most MAX_WIDTH pixels wide (frames downscaled to fit) and shows the colour
scale, each step's number and time, and the video's true and predicted classes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
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
#: Widest strip (PNG) in pixels, and widest run panel of an animation (GIF, MP4): frames are downscaled to fit.
MAX_WIDTH, PANEL_WIDTH = 2000, 480
#: Pixels of the strip around its tiles: left (run names), right, top (title lines), each tile's caption, the
#: colour scale at the bottom, between tiles; and the strip's dots per inch.
LEFT, RIGHT, TOP, CAPTION, SCALE, GAP, DPI = 22, 12, 44, 16, 56, 4, 100
#: Narrowest strip (room for the title and the colour scale), and the narrowest tile with long captions.
MIN_WIDTH, LONG_CAPTIONS = 480, 120


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


def heat_peak(*maps: np.ndarray) -> float:
    """The attention value drawn full red over ``maps`` (each (..., K, K)): their maximum, or FULL_HEAT times the
    uniform share 1 / K^2 when that is larger, so that nearly uniform maps stay blue-cyan all over instead of
    having their small wiggles stretched to the full colour range."""
    cells = maps[0].shape[-1] * maps[0].shape[-2]
    return max(max(float(np.max(m)) for m in maps), FULL_HEAT / cells)


def heat_overlay(frame: np.ndarray, attention: np.ndarray, alpha: float = ALPHA,
                 peak: float | None = None) -> np.ndarray:
    """One frame (H, W, 3) uint8 with its attention map (K, K) upsampled, divided by ``peak`` (default:
    :func:`heat_peak` of this map alone) and blended as jet."""
    height, width = frame.shape[:2]
    peak = heat_peak(attention) if peak is None else peak
    scaled = attention.astype(np.float32) / peak if peak > 0 else np.zeros_like(attention, dtype=np.float32)
    heat = np.clip(cv2.resize(scaled, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)  # (H, W)
    colour = cv2.applyColorMap((heat * 255).round().astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # (H, W, 3) RGB
    return ((1 - alpha) * frame + alpha * colour).round().astype(np.uint8)


def _draw_box(image: np.ndarray, box: Sequence[float] | None) -> None:
    """Draw a [x0, y0, x1, y1] box (x1 / y1 exclusive) in place; NaN or None draws nothing."""
    if box is None or np.isnan(np.asarray(box, dtype=np.float64)).any():
        return
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), BOX_COLOR, max(1, round(image.shape[1] / 320)))


def fit_frames(frames: np.ndarray, boxes: Any, width: int) -> tuple[np.ndarray, Any]:
    """Frames (T, H, W, 3) downscaled (area) to at most ``width`` pixels wide, and their boxes (T, 4) scaled alike."""
    if frames.shape[2] <= width:
        return frames, boxes
    scale = width / frames.shape[2]
    size = (width, max(1, round(frames.shape[1] * scale)))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])  # (T, H', W', 3)
    return small, None if boxes is None else np.asarray(boxes, dtype=np.float64) * scale


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


def overlay_frames(frames: np.ndarray, attention: np.ndarray, boxes: Any = None, alpha: float = ALPHA,
                   peak: float | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8: every frame with its map blended (:func:`heat_overlay`, all divided by ``peak``;
    default: each map by its own) and its box drawn."""
    frames, attention = np.asarray(frames), np.asarray(attention)
    _check(frames, attention, boxes)
    out = np.stack([heat_overlay(f, a, alpha, peak) for f, a in zip(frames, attention, strict=True)])  # (T, H, W, 3)
    for image, box in zip(out, boxes if boxes is not None else [None] * len(out), strict=True):
        _draw_box(image, box)
    return out


def strip_figure(frames: np.ndarray, runs: Mapping[str, np.ndarray], columns: int | None = None, boxes: Any = None,
                 title: str | None = None, steps: Sequence[str] | None = None, alpha: float = ALPHA) -> Any:
    """A matplotlib Figure of the frames (T, H, W, 3) with each run's attention (name -> (T, K, K)) blended.

    One block of rows per run (its name at the left), ``columns`` tiles per row (default: one row), each
    tile captioned with its ``steps`` label (e.g. "step 3/16 · 0.40 s"), ground-truth ``boxes`` (T, 4)
    drawn where given, ``title`` (may hold two lines) above and the colour scale below: every map is
    divided by one peak (:func:`heat_peak`), so a colour means the same attention in every tile. Frames
    are downscaled so that the figure is at most MAX_WIDTH pixels wide.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if not runs:
        raise ValueError("no runs to draw")
    frames = np.asarray(frames)
    columns = min(columns or len(frames), len(frames))
    frames, boxes = fit_frames(frames, boxes, tile_width(frames.shape[2], columns))  # (T, h, w, 3)
    maps = {name: np.asarray(m) for name, m in runs.items()}
    peak = heat_peak(*maps.values())
    h, w = frames.shape[1:3]
    rows = -(-len(frames) // columns)
    width = max(MIN_WIDTH, LEFT + columns * w + (columns - 1) * GAP + RIGHT)
    height = TOP + len(maps) * rows * (CAPTION + h) + (len(maps) - 1) * GAP + SCALE
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    font = 7 if w < 120 else 8
    if title:  # 9 points, or smaller where a line would not fit (a character is about 0.6 em wide)
        size = min(9.0, 1.2 * (width - LEFT - 4) / max(map(len, title.splitlines())))
        fig.text(LEFT / width, 1 - 4 / height, title, ha="left", va="top", fontsize=size)
    top = TOP
    for name, attention in maps.items():
        tiles = overlay_frames(frames, attention, boxes, alpha, peak)  # (T, h, w, 3)
        for i, image in enumerate(tiles):
            r, c = divmod(i, columns)
            y = top + r * (CAPTION + h) + CAPTION
            ax = fig.add_axes((((LEFT + c * (w + GAP)) / width), 1 - (y + h) / height, w / width, h / height),
                              label=f"{name} {i}")
            ax.imshow(image, interpolation="nearest")
            ax.set_axis_off()
            if steps is not None:
                ax.set_title(steps[i], fontsize=font, pad=2)
        if name:
            fig.text(4 / width, 1 - (top + (rows * (CAPTION + h)) / 2) / height, name, rotation=90, ha="left",
                     va="center", fontsize=8)
        top += rows * (CAPTION + h) + GAP
    bar = fig.add_axes((LEFT / width, (SCALE - 16) / height, min(360, width - LEFT - RIGHT) / width, 10 / height),
                       label="colour scale")
    scale = fig.colorbar(ScalarMappable(Normalize(0, peak), "jet"), cax=bar, orientation="horizontal")
    cells = maps[next(iter(maps))].shape[-1] * maps[next(iter(maps))].shape[-2]
    scale.set_label(f"attention per cell (uniform 1/{cells} = {1 / cells:.3g})", fontsize=font)
    scale.ax.tick_params(labelsize=font)
    return fig


def tile_width(frame_width: int, columns: int) -> int:
    """The width of a strip's tiles: the frames' own, or less so that ``columns`` of them fit MAX_WIDTH."""
    return min(frame_width, (MAX_WIDTH - LEFT - RIGHT - (columns - 1) * GAP) // columns)


def save_figure(fig: Any, out_png: str | Path) -> Path:
    """Write a matplotlib Figure as a PNG at its own size and close it."""
    from matplotlib import pyplot as plt

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png", dpi=DPI)
    plt.close(fig)
    return out_png


def attention_strip(frames: np.ndarray, attention: np.ndarray, out_png: str | Path, columns: int | None = None,
                    boxes: Any = None, title: str | None = None, steps: Sequence[str] | None = None,
                    alpha: float = ALPHA) -> Path:
    """A PNG of the frames (T, H, W, 3) with their attention (T, K, K) blended (:func:`strip_figure`)."""
    return save_figure(strip_figure(frames, {"": attention}, columns, boxes, title, steps, alpha), out_png)


def compare_strips(frames: np.ndarray, runs: Mapping[str, np.ndarray], out_png: str | Path,
                   columns: int | None = None, boxes: Any = None, title: str | None = None,
                   steps: Sequence[str] | None = None, alpha: float = ALPHA) -> Path:
    """One strip per run (name -> attention (T, K, K)) over the same frames, stacked with their names
    (e.g. regattn at lambda = 0 above lambda > 0, as Fig. 6 of the structured-attention paper)."""
    if not runs:
        raise ValueError(f"{out_png}: no runs to compare")
    return save_figure(strip_figure(frames, runs, columns, boxes, title, steps, alpha), out_png)


def step_labels(chosen: Iterable[int], total: int, timestamps: Sequence[float | None] = (),
                short: bool = False, spans: Sequence[tuple[int, int]] = (),
                time_spans: Sequence[tuple[float | None, float | None]] = ()) -> list[str]:
    """A caption per picked stored frame: its step number out of ``total`` ("step 3/16"; ``short``: "3") and,
    where known, its time; a step that covers a clip (a video backbone's: ``spans`` of source frames and their
    ``time_spans``) gives the frames and times it covers ("step 3/16 · frames 32-47 · 1.28-1.88 s")."""
    labels = []
    for i in chosen:
        time = timestamps[i] if i < len(timestamps) else None
        step = f"{i + 1}" if short else f"step {i + 1}/{total}"
        first, last = spans[i] if i < len(spans) else (0, 0)
        if first != last:
            start, end = time_spans[i] if i < len(time_spans) else (None, None)
            step += f" \u00b7 {first}-{last}" if short else f" \u00b7 frames {first}-{last}"
            labels.append(step + ("" if start is None or end is None else f" \u00b7 {start:.2f}-{end:.2f} s"))
            continue
        labels.append(step + ("" if time is None else f" \u00b7 {time:.2f} s"))
    return labels


def class_line(classes: Sequence[str] | None, labels: Sequence[int], predicted: Mapping[str, int] | None) -> str:
    """"true: X · predicted: Y" (one prediction per run, named when there are several); empty without classes."""
    if classes is None:
        return ""
    line = "true: " + ", ".join(classes[i] for i in labels)
    if predicted:
        shown = [classes[c] if len(predicted) == 1 else f"{classes[c]} ({name})" for name, c in predicted.items()]
        line += " \u00b7 predicted: " + ", ".join(shown)
    return line


def animation_frames(frames: np.ndarray, attention: np.ndarray | Mapping[str, np.ndarray], boxes: Any = None,
                     alpha: float = ALPHA, timestamps: Sequence[float | None] = ()) -> np.ndarray:
    """The frames of an attention animation (T, H', W', 3) uint8: one per time step, its step number (and
    time, where ``timestamps`` give it) on top, frames downscaled to PANEL_WIDTH, one colour peak for all.

    ``attention`` is (T, K, K), or name -> (T, K, K) for several runs side by side (each under its name).
    """
    runs = {name: np.asarray(m) for name, m in attention.items()} if isinstance(attention, Mapping) \
        else {"": np.asarray(attention)}
    if not runs:
        raise ValueError("no attention to animate")
    frames, boxes = fit_frames(np.asarray(frames), boxes, PANEL_WIDTH)
    peak = heat_peak(*runs.values())
    panels = []
    for name, maps in runs.items():
        tiles = overlay_frames(frames, maps, boxes, alpha, peak)  # (T, H, W, 3)
        if len(runs) > 1:
            tiles = np.stack([np.concatenate([_band(t.shape[1], name), t]) for t in tiles])
        panels.append(tiles)
    steps = np.concatenate(panels, axis=2) if len(panels) > 1 else panels[0]  # (T, H', W', 3)
    labels = [label.replace("step ", "").replace("\u00b7", "-") for label in
              step_labels(range(len(steps)), len(steps), timestamps)]  # the default font has no middle dot
    return np.stack([np.concatenate([_band(step.shape[1], label), step])
                     for label, step in zip(labels, steps, strict=True)])  # (T, BAND + H', W', 3)


def attention_gif(frames: np.ndarray, attention: np.ndarray | Mapping[str, np.ndarray], out_gif: str | Path,
                  fps: float = 4, boxes: Any = None, alpha: float = ALPHA,
                  timestamps: Sequence[float | None] = ()) -> Path:
    """An animated GIF of :func:`animation_frames`, looping."""
    images = [Image.fromarray(step) for step in animation_frames(frames, attention, boxes, alpha, timestamps)]
    out_gif = Path(out_gif)
    out_gif.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(out_gif, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, int(round(1000 / fps))), loop=0)
    return out_gif


def attention_mp4(frames: np.ndarray, attention: np.ndarray | Mapping[str, np.ndarray], out_mp4: str | Path,
                  fps: float = 4, boxes: Any = None, alpha: float = ALPHA,
                  timestamps: Sequence[float | None] = ()) -> Path:
    """An H.264 MP4 of :func:`animation_frames` (padded white to even sizes, 4:2:0, so any player opens it)."""
    steps = animation_frames(frames, attention, boxes, alpha, timestamps)  # (T, H', W', 3)
    _, height, width, _ = steps.shape
    steps = np.pad(steps, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), constant_values=255)
    return write_video(out_mp4, steps, fps=fps, codec="libx264")


def video_strip(entry: Any, frames: np.ndarray, runs: Mapping[str, np.ndarray], steps: int | None = 8,
                classes: Sequence[str] | None = None, predicted: Mapping[str, int] | None = None) -> Any:
    """The strip Figure (:func:`strip_figure`) of one store video: ``steps`` equally spaced of its stored
    ``frames`` (n_frames, H, W, 3) with each run's attention (name -> (n_frames, K, K)), its boxes, each
    tile's step and time (the store's timestamps; a clip's step: the frames and times it covers, drawn on its
    middle frame), and a title naming the video, its true classes and each
    run's ``predicted`` class (indices into ``classes``)."""
    for name, maps in runs.items():
        if len(maps) != len(frames):
            raise ValueError(f"video {entry.id!r}: run {name!r} has {len(maps)} maps for {len(frames)} stored frames")
    chosen = pick_steps(len(frames), steps)
    boxes = None if entry.boxes is None else np.asarray(entry.boxes, dtype=np.float64)[chosen]  # (steps, 4)
    picked = {name if len(runs) > 1 else "": np.asarray(maps)[chosen] for name, maps in runs.items()}
    title = "\n".join(filter(None, [entry.id, class_line(classes, entry.labels, predicted)]))
    short = tile_width(frames.shape[2], len(chosen)) < LONG_CAPTIONS
    return strip_figure(frames[chosen], picked, boxes=boxes, title=title,
                        steps=step_labels(chosen, len(frames), entry.timestamps, short, entry.spans(),
                                          entry.time_spans()))


def video_attention_figures(entry: Any, runs: Mapping[str, np.ndarray], out_dir: str | Path, steps: int | None = 8,
                            path: str | os.PathLike | None = None, fps: float = 4,
                            classes: Sequence[str] | None = None,
                            predicted: Mapping[str, int] | None = None) -> dict[str, Path]:
    """Strip PNG (:func:`video_strip`), GIF and MP4 (every stored frame) of one store video (a done ``VideoEntry``).

    ``runs``: name -> per-stored-frame attention (n_frames, K, K) (see
    :func:`evaluate.localization.frame_attention`); several runs are drawn side by side. Files are named
    after the video id ("/" -> "__"); ``path`` replaces the recorded source path.
    """
    frames = stored_frames(entry, path)  # (n_frames, H, W, 3)
    stem = Path(out_dir) / entry.id.replace("/", "__")
    png = save_figure(video_strip(entry, frames, runs, steps, classes, predicted), f"{stem}_attention.png")
    boxes = None if entry.boxes is None else np.asarray(entry.boxes, dtype=np.float64)  # (n_frames, 4)
    gif = attention_gif(frames, dict(runs), f"{stem}_attention.gif", fps=fps, boxes=boxes, timestamps=entry.timestamps)
    mp4 = attention_mp4(frames, dict(runs), f"{stem}_attention.mp4", fps=fps, boxes=boxes, timestamps=entry.timestamps)
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
