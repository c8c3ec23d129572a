"""Synthetic action dataset: real encoded videos of one moving object among distractors.

Each class is the motion pattern of ONE small bright red target (a shape plus a straight,
zigzag or circular trajectory) over a smooth random background with 2-4 muted distractors.
By default the distractors are decoys: each acts out another class of the dataset (that class's
shape on that class's kind of trajectory), so the whole frame holds several classes' patterns and
only the red one says which class the clip is: a model has to find the target to classify, which
is what attention is for. Written in the UCF-101 layout with a per-frame box file beside every
video, encoded by the project's one encoder (:func:`glimpse.media.encode.write_video`).
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from glimpse.errors import Command
from glimpse.media.encode import write_video

# ----------------------------------------------------------------------------------------------
# class registry


@dataclass(frozen=True)
class Pattern:
    """The motion pattern of a class: the target's shape and its trajectory.

    ``motion`` is "straight", "zigzag" (straight plus a sideways triangle wave) or "circle".
    ``direction`` is the unit (dx, dy) of travel in image coordinates (y points down) for
    straight and zigzag motion; ``spin`` is +1 (clockwise on screen) or -1 for circles.
    """

    shape: str
    motion: str
    direction: tuple[float, float] = (0.0, 0.0)
    spin: int = 0

    @property
    def description(self) -> str:
        """One line of English, e.g. "red square moving right in a straight line"."""
        if self.motion == "circle":
            way = "clockwise" if self.spin > 0 else "counter-clockwise"
            return f"red {self.shape} circling {way}"
        dx, dy = self.direction
        way = " ".join(w for w, d in (("up", -dy), ("down", dy), ("left", -dx), ("right", dx)) if d > 0.1)
        line = "in a straight line" if self.motion == "straight" else "in a zigzag"
        return f"red {self.shape} moving {way} {line}"


_DIAG = 1 / math.sqrt(2)

#: class name -> motion pattern; ``--classes K`` uses the first K, so the first four differ most
CLASS_PATTERNS: dict[str, Pattern] = {
    "SquareRight": Pattern("square", "straight", (1.0, 0.0)),
    "DiscLeft": Pattern("disc", "straight", (-1.0, 0.0)),
    "TriangleDown": Pattern("triangle", "straight", (0.0, 1.0)),
    "CrossCircle": Pattern("cross", "circle", spin=1),
    "DiamondUp": Pattern("diamond", "straight", (0.0, -1.0)),
    "StarZigzagRight": Pattern("star", "zigzag", (1.0, 0.0)),
    "RingCounterCircle": Pattern("ring", "circle", spin=-1),
    "HexagonZigzagDown": Pattern("hexagon", "zigzag", (0.0, 1.0)),
    "SquareDownRight": Pattern("square", "straight", (_DIAG, _DIAG)),
    "DiscUpLeft": Pattern("disc", "straight", (-_DIAG, -_DIAG)),
    "TriangleZigzagLeft": Pattern("triangle", "zigzag", (-1.0, 0.0)),
    "CrossUp": Pattern("cross", "straight", (0.0, -1.0)),
}

SHAPES = ("square", "disc", "triangle", "cross", "diamond", "star", "ring", "hexagon")


# ----------------------------------------------------------------------------------------------
# rendering

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions, so slow motion stays smooth
_ONE = 1 << _SHIFT


def _polygon(shape: str, h: float) -> np.ndarray:
    """Vertices (N, 2) of ``shape`` centred on 0 with half-extent ``h`` on both axes."""
    if shape == "square":
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "diamond":
        return np.array([[0, -h], [h, 0], [0, h], [-h, 0]])
    if shape == "triangle":
        return np.array([[0, -h], [h, h], [-h, h]])
    if shape == "cross":
        a = 0.35 * h
        return np.array([[-a, -h], [a, -h], [a, -a], [h, -a], [h, a], [a, a],
                         [a, h], [-a, h], [-a, a], [-h, a], [-h, -a], [-a, -a]])  # fmt: skip
    if shape in ("star", "hexagon"):
        n = 10 if shape == "star" else 6
        angles = -math.pi / 2 + np.arange(n) * 2 * math.pi / n
        radii = np.where(np.arange(n) % 2, 0.45 * h, h) if shape == "star" else np.full(n, h)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _draw(canvas: np.ndarray, shape: str, centre: np.ndarray, h: float, color: tuple[int, ...]) -> None:
    """Draw one anti-aliased filled ``shape`` (half-extent ``h``) at sub-pixel ``centre`` in place."""
    if shape in ("disc", "ring"):
        thickness = -1 if shape == "disc" else max(2, round(0.45 * h))
        radius = h if shape == "disc" else h - thickness / 2
        cx, cy = (round(c * _ONE) for c in centre)
        cv2.circle(canvas, (cx, cy), round(radius * _ONE), color, thickness, cv2.LINE_AA, _SHIFT)
        return
    points = np.round((_polygon(shape, h) + centre) * _ONE).astype(np.int32)  # (N, 2)
    cv2.fillPoly(canvas, [points], color, cv2.LINE_AA, _SHIFT)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    """HSV in [0, 1] -> an RGB uint8 triple."""
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, muted random texture (size, size, 3) uint8: two octaves of upsampled noise."""
    coarse = cv2.resize(rng.random((6, 6), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.random((14, 14), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    tint = cv2.resize(rng.random((4, 4, 3), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    gray = 0.7 * coarse + 0.3 * fine  # (S, S)
    rgb = 70.0 + 110.0 * gray[..., None] + 40.0 * (tint - 0.5)  # (S, S, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _target_path(pattern: Pattern, rng: np.random.Generator, size: int, frames: int, h: float) -> np.ndarray:
    """Centres (F, 2) of the target, jittered in start, speed and extent, fully inside the frame."""
    t = np.linspace(0.0, 1.0, frames)[:, None]  # (F, 1)
    if pattern.motion == "circle":
        radius = rng.uniform(0.2, 0.28) * size
        angle = rng.uniform(0, 2 * math.pi) + pattern.spin * rng.uniform(1.5, 2.0) * math.pi * t[:, 0]
        offsets = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (F, 2)
    else:
        direction = np.asarray(pattern.direction, dtype=np.float64)
        offsets = rng.uniform(0.45, 0.6) * size * direction * t  # (F, 2)
        if pattern.motion == "zigzag":
            sideways = np.array([-direction[1], direction[0]])
            phase = rng.uniform(0, 1)
            wave = 2 * np.abs(2 * ((2 * t + phase) % 1.0) - 1) - 1  # (F, 1) triangle wave, 2 periods
            offsets = offsets + rng.uniform(0.07, 0.1) * size * wave * sideways
    margin = h + 3  # anti-aliasing spills a pixel past the outline; keep one more clear of the edge
    span = size - 2 * margin
    extent = offsets.max(axis=0) - offsets.min(axis=0)  # (2,)
    offsets = offsets * min(1.0, span / max(extent.max(), 1e-9))  # tiny frames: shrink the path to fit
    low = margin - offsets.min(axis=0)
    high = size - margin - offsets.max(axis=0)
    return rng.uniform(low, np.maximum(low, high)) + offsets


def _distractor_paths(rng: np.random.Generator, size: int, frames: int, count: int, h: np.ndarray) -> np.ndarray:
    """Centres (F, count, 2) of randomly wandering distractors that bounce off the frame edges."""
    low, high = (h + 2)[:, None], (size - h - 2)[:, None]  # (D, 1)
    position = rng.uniform(low, high, size=(count, 2))  # (D, 2)
    angle = rng.uniform(0, 2 * math.pi, size=count)
    velocity = rng.uniform(0.015, 0.04, size=(count, 1)) * size * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    kicks = rng.normal(0, 0.01 * size, size=(frames, count, 2))  # (F, D, 2)
    paths = np.empty((frames, count, 2))
    for i in range(frames):
        paths[i] = position
        velocity = velocity + kicks[i]
        position = position + velocity
        bounced = (position < low) | (position > high)  # (D, 2)
        velocity = np.where(bounced, -velocity, velocity)
        position = np.clip(position, low, high)
    return paths


def render_clip(
    name: str, size: int, frames: int, seed: int | Sequence[int], with_target: bool = True,
    decoys: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip of class ``name``: frames (F, S, S, 3) uint8 RGB and target boxes (F, 4) int.

    Distractors wander at random, or, where ``decoys`` names classes, each acts out one of those
    classes other than ``name`` in muted colours. A box is ``[x0, y0, x1, y1]`` in pixels,
    ``x1``/``y1`` exclusive, tight around every pixel the target touches. The same ``seed`` always
    gives the same clip; ``with_target=False`` gives the very same clip (background, distractors,
    boxes) without the target drawn.
    """
    if name not in CLASS_PATTERNS:
        raise ValueError(f"unknown synthetic class {name!r}; known: {', '.join(CLASS_PATTERNS)}")
    pattern = CLASS_PATTERNS[name]
    rng = np.random.default_rng(seed)
    # every random draw happens here, before drawing, so with_target changes nothing else
    h = size / 16 * rng.uniform(0.95, 1.2)
    color = _rgb(rng.uniform(-0.035, 0.035), rng.uniform(0.85, 1.0), rng.uniform(0.9, 1.0))
    centres = _target_path(pattern, rng, size, frames, h)  # (F, 2)
    count = int(rng.integers(2, 5))
    others = [s for s in SHAPES if s != pattern.shape]
    shapes = [others[i] for i in rng.integers(0, len(others), size=count)]
    sizes = size / 16 * rng.uniform(0.85, 1.2, size=count)  # (D,)
    colors = [_rgb(rng.uniform(0.3, 0.75), rng.uniform(0.35, 0.7), rng.uniform(0.45, 0.85)) for _ in range(count)]
    paths = _distractor_paths(rng, size, frames, count, sizes)  # (F, D, 2)
    decoy_names = [d for d in decoys if d != name]
    if decoy_names:  # every distractor acts out another class: its shape on its trajectory, muted
        acted = [CLASS_PATTERNS[decoy_names[i]] for i in rng.integers(0, len(decoy_names), size=count)]
        shapes = [a.shape for a in acted]
        paths = np.stack([_target_path(a, rng, size, frames, h_d) for a, h_d in zip(acted, sizes, strict=True)], 1)
    background = _background(rng, size)

    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    boxes = np.empty((frames, 4), dtype=np.int64)
    mask = np.empty((size, size), dtype=np.uint8)
    for i in range(frames):
        canvas = background.copy()
        for shape, h_d, c_d, centre in zip(shapes, sizes, colors, paths[i], strict=True):
            _draw(canvas, shape, centre, h_d, c_d)
        if with_target:
            _draw(canvas, pattern.shape, centres[i], h, color)
        video[i] = canvas
        mask[:] = 0
        _draw(mask, pattern.shape, centres[i], h, (255,))
        ys, xs = np.nonzero(mask)
        boxes[i] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return video, boxes


# ----------------------------------------------------------------------------------------------
# the dataset

MANIFEST = "synthetic.json"
VIDEO_DIR, SPLIT_DIR = "UCF-101", "ucfTrainTestlist"


@dataclass(frozen=True)
class SynthConfig:
    """What to generate: ``classes`` x ``per_class`` clips of ``frames`` frames at ``size`` x ``size``.

    ``decoys``: the distractors act out the dataset's other classes (see the module docstring);
    False gives randomly wandering distractors of other shapes.
    """

    classes: int = 4
    per_class: int = 12
    frames: int = 24
    size: int = 112
    seed: int = 0
    fps: int = 25
    decoys: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.classes <= len(CLASS_PATTERNS):
            raise ValueError(f"synthetic classes must be in 1..{len(CLASS_PATTERNS)}, got {self.classes}")
        if self.per_class < 2:
            raise ValueError(f"synthetic per_class must be >= 2 (one train and one test group), got {self.per_class}")
        if self.frames < 2:
            raise ValueError(f"synthetic frames must be >= 2 to show motion, got {self.frames}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"synthetic size must be even and >= 32 (the encoder needs even sizes), got {self.size}")
        if self.fps < 1:
            raise ValueError(f"synthetic fps must be >= 1, got {self.fps}")


def group_sizes(per_class: int) -> list[int]:
    """Clips per group for one class: ceil(per_class / 3) (at least 2) groups of nearly equal size."""
    groups = max(2, math.ceil(per_class / 3))
    return [per_class // groups + (g < per_class % groups) for g in range(groups)]


def n_test_groups(groups: int) -> int:
    """How many groups (the first ones, as in UCF-101 split 1) are test: about 30%, at least one each way."""
    return min(groups - 1, max(1, round(0.3 * groups)))


def _check_out(out: Path, config: SynthConfig) -> None:
    """Refuse a non-empty ``out`` unless it holds a synthetic dataset made with the same config."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    try:
        previous = json.loads(manifest.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FileExistsError(
            f"{out}: not empty and not a synthetic dataset ({manifest.name} unreadable: {error}); "
            "choose an empty or new folder"
        ) from None
    if previous != asdict(config):
        raise FileExistsError(
            f"{out}: holds a synthetic dataset made with another config {previous}, not {asdict(config)}; "
            "choose an empty or new folder"
        )


def make_synthetic(out: str | Path, config: SynthConfig, progress: bool = False) -> Path:
    """Write the synthetic dataset in the UCF-101 layout under ``out`` and return ``out``.

    Writes ``UCF-101/<Class>/v_<Class>_gGG_cCC.{mp4,avi}`` with a ``.boxes.json`` beside each,
    ``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`` and the manifest ``synthetic.json``.
    The same config always gives byte-identical files; asking again for the same config into
    the same folder regenerates it, any other non-empty folder is refused.
    """
    out = Path(out)
    _check_out(out, config)
    names = list(CLASS_PATTERNS)[: config.classes]
    sizes = group_sizes(config.per_class)
    n_test = n_test_groups(len(sizes))
    videos = []
    for c, name in enumerate(names):
        v = 0
        for g, clips in enumerate(sizes, start=1):
            for clip in range(1, clips + 1):
                stem = f"{VIDEO_DIR}/{name}/v_{name}_g{g:02d}_c{clip:02d}"
                suffix = ".mp4" if v % 2 == 0 else ".avi"
                videos.append({
                    "path": stem + suffix, "boxes": stem + ".boxes.json", "class": name, "group": g, "clip": clip,
                    "split": "test" if g <= n_test else "train", "seed": [config.seed, c, v],
                })  # fmt: skip
                v += 1
    manifest = {
        "generator": "glimpse synth",
        "config": asdict(config),
        "classes": [{"name": n, "description": CLASS_PATTERNS[n].description} for n in names],
        "counts": {
            "classes": len(names),
            "videos": len(videos),
            "groups_per_class": len(sizes),
            "train": sum(v["split"] == "train" for v in videos),
            "test": sum(v["split"] == "test" for v in videos),
        },
        "box_format": "[x0, y0, x1, y1] pixels per source frame, x1 and y1 exclusive, tight around the target",
        "videos": videos,
        "complete": False,
    }
    out.mkdir(parents=True, exist_ok=True)
    # the manifest goes first so an interrupted run is recognised, and regenerated, next time
    _write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for video in tqdm(videos, desc="synth", unit="video", disable=not progress):
        frames, boxes = render_clip(video["class"], config.size, config.frames, video["seed"],
                                    decoys=names if config.decoys else ())
        write_video(out / video["path"], frames, fps=config.fps)
        box_file = {"width": config.size, "height": config.size, "fps": config.fps, "boxes": boxes.tolist()}
        _write_text(out / video["boxes"], json.dumps(box_file, separators=(",", ":")) + "\n")
    label = {name: i for i, name in enumerate(names, start=1)}
    lists = out / SPLIT_DIR
    lists.mkdir(exist_ok=True)
    _write_text(lists / "classInd.txt", "".join(f"{i} {name}\n" for name, i in label.items()))
    rel = {v["path"]: v["path"].removeprefix(VIDEO_DIR + "/") for v in videos}
    train = [f"{rel[v['path']]} {label[v['class']]}\n" for v in videos if v["split"] == "train"]
    _write_text(lists / "trainlist01.txt", "".join(train))
    _write_text(lists / "testlist01.txt", "".join(f"{rel[v['path']]}\n" for v in videos if v["split"] == "test"))
    manifest["complete"] = True
    _write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return out


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` with "\\n" line ends on every platform (byte-identical output)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


@click.command("synth", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="data/synthetic", show_default=True, type=click.Path(), help="Dataset folder.")
@click.option("--classes", default=SynthConfig.classes, show_default=True, help="Number of classes (first K).")
@click.option("--per-class", default=SynthConfig.per_class, show_default=True, help="Videos per class.")
@click.option("--frames", default=SynthConfig.frames, show_default=True, help="Frames per video.")
@click.option("--size", default=SynthConfig.size, show_default=True, help="Frame width and height (even).")
@click.option("--seed", default=SynthConfig.seed, show_default=True, help="Random seed; same seed, same bytes.")
@click.option("--fps", default=SynthConfig.fps, show_default=True, help="Frame rate written into the videos.")
@click.option("--decoys/--no-decoys", default=SynthConfig.decoys, show_default=True,
              help="Distractors act out the other classes (only the red target tells the class).")
def main(out: str, classes: int, per_class: int, frames: int, size: int, seed: int, fps: int, decoys: bool) -> None:
    """Write the synthetic action dataset (UCF-101 layout, with per-frame target boxes)."""
    try:
        config = SynthConfig(classes=classes, per_class=per_class, frames=frames, size=size, seed=seed, fps=fps,
                             decoys=decoys)
        make_synthetic(out, config, progress=True)
    except (ValueError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {classes * per_class} videos of {classes} classes to {out}")
