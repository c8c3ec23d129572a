"""Attention localisation against ground-truth boxes: attention mass inside the box and the pointing game.

An attention map is a K x K grid over the S x S resized frame (aspect ratio not kept), so a box
``[x0, y0, x1, y1]`` in source pixels of a W x H frame maps to grid coordinates ``x * K / W``,
``y * K / H``. Cell (i, j) (row i, column j) covers ``[j, j + 1) x [i, i + 1)`` there.

- mass: the attention summed over cells, each weighted by the fraction of its area inside the box;
- pointing: a hit when the arg-max cell's centre lies inside the box (x1 / y1 exclusive). Cells tied
  at the maximum share the hit (the fraction of them whose centre is inside), which is the expected
  hit of breaking the tie at random: a uniform map then scores exactly the uniform baseline;
- uniform baselines for the same boxes: mass = the box's area fraction of the frame, pointing = the
  fraction of cells whose centre is inside the box (the hit rate of a uniformly random arg-max).

Frames without a box (NaN rows) are skipped; a video's score is the mean over its boxed frames and
:func:`localization_scores` averages videos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: How far from one a map's sum may be (float16 cubes, float32 softmax).
SUM_TOLERANCE = 1e-3
#: Relative tolerance under which two cells tie for the maximum.
TIE_TOLERANCE = 1e-6


def frame_size(entry: Any) -> tuple[int, int]:
    """(W, H) of a store video's upright frames, the pixels its boxes are in (from ``entry.source``)."""
    source = entry.source
    try:
        width, height = int(source["width"]), int(source["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"video {entry.id!r}: the store records no source width/height") from None
    if (int(source.get("rotation", 0)) // 90) % 2:  # a video shown turned by 90 or 270 degrees
        width, height = height, width
    return width, height


def frame_attention(attention: np.ndarray, clip: Any, n_frames: int) -> np.ndarray:
    """Per stored frame attention (n_frames, K, K) from a video's clip maps (clips, T, K, K).

    The clips are those ``clip.cover(n_frames)`` (``train.sampling.Policy``) gave evaluation. A frame seen
    by several clip steps (overlapping last clip, padding, several stride offsets) gets the mean of
    their maps, which still sums to one.
    """
    attention = np.asarray(attention, dtype=np.float64)
    cover = np.asarray(clip.cover(n_frames))  # (clips, T) stored frame indices
    if attention.ndim != 4 or attention.shape[:2] != cover.shape:
        raise ValueError(f"attention {attention.shape} does not match the clips {cover.shape} that cover "
                         f"{n_frames} frames with {clip}")
    k = attention.shape[-1]
    total = np.zeros((n_frames, k, k))
    visits = np.zeros(n_frames)
    np.add.at(total, cover.reshape(-1), attention.reshape(-1, k, k))
    np.add.at(visits, cover.reshape(-1), 1)
    if (visits == 0).any():
        raise ValueError(f"frames {np.flatnonzero(visits == 0).tolist()} are in no clip of {clip}")
    return total / visits[:, None, None]  # (n_frames, K, K)


def box_cell_weights(box: Sequence[float], k: int, width: int, height: int) -> np.ndarray:
    """(K, K) fraction of each cell's area inside ``box`` ([x0, y0, x1, y1] source pixels of W x H)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    edges = np.arange(k, dtype=np.float64)  # (K,) low edge of each cell

    def overlap(lo: float, hi: float) -> np.ndarray:
        return np.clip(np.minimum(edges + 1, hi) - np.maximum(edges, lo), 0.0, 1.0)  # (K,)

    rows = overlap(y0 * k / height, y1 * k / height)  # (K,)
    cols = overlap(x0 * k / width, x1 * k / width)  # (K,)
    return rows[:, None] * cols[None, :]  # (K, K)


def box_cell_centres(box: Sequence[float], k: int, width: int, height: int) -> np.ndarray:
    """(K, K) bool: the cell's centre lies inside ``box`` (x1 / y1 exclusive)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    centres = np.arange(k) + 0.5  # (K,)
    rows = (centres >= y0 * k / height) & (centres < y1 * k / height)  # (K,)
    cols = (centres >= x0 * k / width) & (centres < x1 * k / width)  # (K,)
    return rows[:, None] & cols[None, :]  # (K, K)


def video_localization(attention: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]], width: int,
                       height: int) -> dict[str, Any] | None:
    """Localisation of one video: maps (T, K, K) against boxes (T, 4) in source pixels of a W x H frame.

    Returns {"frames": boxed frames used, "mass", "hit", "uniform_mass", "uniform_hit"} (means over
    those frames), or None when no frame has a box.
    """
    attention = np.asarray(attention, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"attention must be (T, K, K), got {attention.shape}")
    if boxes.shape != (len(attention), 4):
        raise ValueError(f"boxes must be ({len(attention)}, 4) for {len(attention)} maps, got {boxes.shape}")
    if (attention < 0).any() or not np.isfinite(attention).all():
        raise ValueError("attention maps must be finite and non-negative")
    sums = attention.sum((1, 2))  # (T,)
    if np.abs(sums - 1).max() > SUM_TOLERANCE:
        raise ValueError(f"each attention map must sum to 1; step {int(np.abs(sums - 1).argmax())} sums to "
                         f"{sums[np.abs(sums - 1).argmax()]:.4f}")
    k = attention.shape[-1]
    rows = []
    for a, box in zip(attention, boxes, strict=True):
        if np.isnan(box).any():
            continue
        weights = box_cell_weights(box, k, width, height)  # (K, K)
        inside = box_cell_centres(box, k, width, height)  # (K, K)
        top = a >= a.max() * (1 - TIE_TOLERANCE)  # (K, K) cells tied at the maximum
        rows.append((float((a * weights).sum()), float(inside[top].mean()), float(weights.sum() / k**2),
                     float(inside.mean())))
    if not rows:
        return None
    mass, hit, uniform_mass, uniform_hit = np.mean(rows, axis=0)
    return {"frames": len(rows), "mass": float(mass), "hit": float(hit), "uniform_mass": float(uniform_mass),
            "uniform_hit": float(uniform_hit)}


def localization_scores(predictions: Iterable[Any], entries: Mapping[str, Any] | Sequence[Any],
                        clip: Any) -> dict[str, Any]:
    """Localisation of a run's attention over videos with ground-truth boxes, against uniform attention.

    ``predictions``: ``train.predict.VideoPrediction`` s (``id``, ``attention`` (clips, T, K, K));
    ``entries``: the store's ``VideoEntry`` s (a list, or a dict by id) with ``boxes``, ``n_frames``
    and ``source``; ``clip``: the run's ``train.sampling.Policy``. Returns {"videos": with boxes,
    "frames": boxed frames, "videos_without_boxes", "mass", "hit_rate", "uniform_mass",
    "uniform_hit_rate" (means over videos), "per_video": [{"id", ...}]}; the means are None when no
    video has a box.
    """
    by_id = dict(entries) if isinstance(entries, Mapping) else {e.id: e for e in entries}
    per_video, without = [], 0
    for p in predictions:
        if p.attention is None:
            raise ValueError(f"video {p.id!r}: the model gives no attention maps; nothing to localise")
        if p.id not in by_id:
            raise ValueError(f"video {p.id!r}: not among the store's videos")
        entry = by_id[p.id]
        if entry.boxes is None:
            without += 1
            continue
        maps = frame_attention(p.attention, clip, entry.n_frames)  # (n_frames, K, K)
        width, height = frame_size(entry)
        scores = video_localization(maps, np.asarray(entry.boxes, dtype=np.float64), width, height)
        if scores is None:
            without += 1
            continue
        per_video.append({"id": p.id, **scores})
    result: dict[str, Any] = {"videos": len(per_video), "frames": sum(v["frames"] for v in per_video),
                              "videos_without_boxes": without}
    for name, key in (("mass", "mass"), ("hit_rate", "hit"), ("uniform_mass", "uniform_mass"),
                      ("uniform_hit_rate", "uniform_hit")):
        result[name] = float(np.mean([v[key] for v in per_video])) if per_video else None
    result["per_video"] = per_video
    return result
