"""Video-level classification metrics: top-1/top-5, per-class accuracy, per-class AP and mAP, confusion.

AP comes from :func:`glimpse.train.metrics.average_precisions` (the one AP, shared with training's model
selection) and the confusion matrix from scikit-learn. Every result is plain JSON (floats, ints, lists,
None), so a run's evaluation can be written with :func:`save_json` and read back anywhere.

Protocols: single-label datasets (UCF-11/101, HMDB-51, Olympic Sports' mAP over its one-vs-rest
classes) score each video by its true class; multi-label datasets (Hollywood2) score a top-k hit when
any of the video's classes is among the k best, and AP per class over multi-hot targets.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from glimpse.files import atomic_write_text
from glimpse.train.metrics import average_precisions, multi_hot

__all__ = ["classification_metrics", "frame_accuracy", "multi_hot", "prediction_metrics", "save_json", "save_metrics",
           "top_k_hits"]


def _label_tuples(labels: Sequence[Sequence[int]] | Sequence[int] | np.ndarray, n: int, classes: int) -> list[tuple]:
    """Labels as one tuple of class indices per video, checked against ``n`` videos and ``classes`` classes."""
    rows = [tuple(int(c) for c in lab) if isinstance(lab, (tuple, list, np.ndarray)) else (int(lab),)
            for lab in labels]
    if len(rows) != n:
        raise ValueError(f"{len(rows)} label entries for {n} score rows")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"video {i} has no label")
        bad = [c for c in row if not 0 <= c < classes]
        if bad:
            raise ValueError(f"video {i} has label(s) {bad} outside 0..{classes - 1}")
    return rows


def top_k_hits(scores: np.ndarray, labels: Sequence[tuple[int, ...]], k: int) -> np.ndarray:
    """(N,) bool: one of the video's labels is among its ``k`` highest scores (ties go to the lower class)."""
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return np.array([bool(set(row.tolist()) & set(labs)) for row, labs in zip(ranked, labels, strict=True)])


def classification_metrics(
    scores: np.ndarray,
    labels: Sequence[Sequence[int]] | Sequence[int] | np.ndarray,
    classes: Sequence[str],
    multi_label: bool,
) -> dict[str, Any]:
    """Every video-level metric of the papers from ``scores`` (N, C) and each video's label(s).

    ``labels``: (N,) class indices, or one tuple of class indices per video. ``multi_label`` is the
    store's (``Store.multi_label``, declared by the dataset adapter at extraction), never guessed here.

    Returns a JSON-ready dict:
      - ``top1``, ``top5``: share of videos with a true class among the 1 / min(5, C) best scores
        (``top5_k`` says which k); the top class of a multi-label video counts if it is any of its labels;
      - ``per_class``: class name -> {"accuracy": top-1 hit rate over the videos of that class, "count",
        "ap"}; ``mean_class_accuracy`` averages the classes that have videos;
      - ``map``: mean of the per-class APs (sklearn ``average_precision_score``, one class against the
        rest). A class with no positive video has no AP: it is reported as None and left out of the
        mean, and listed in ``classes_without_positives``;
      - ``confusion``: (C, C) counts, rows true class, columns predicted (top-1), single-label only
        (None for multi-label).
    """
    scores = np.asarray(scores, dtype=np.float64)
    names = [str(c) for c in classes]
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(f"scores must be (videos, {len(names)} classes), got shape {scores.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no videos to score (scores has 0 rows)")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
    n, c = scores.shape
    rows = _label_tuples(labels, n, c)
    if not multi_label and any(len(r) > 1 for r in rows):
        raise ValueError("multi_label=False but some videos have several labels")

    k = min(5, c)
    top1 = top_k_hits(scores, rows, 1)  # (N,)
    truth = multi_hot(rows, c)  # (N, C)
    aps, mean_ap = average_precisions(truth, scores)  # (C,) APs, None where a class has no positive video
    per_class: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        mine = truth[:, j] == 1  # (N,)
        count = int(mine.sum())
        per_class[name] = {"accuracy": float(top1[mine].mean()) if count else None, "count": count, "ap": aps[j]}
    accuracies = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    confusion = None
    if not multi_label:
        predicted = np.argsort(-scores, axis=1, kind="stable")[:, 0]  # (N,)
        confusion = confusion_matrix([r[0] for r in rows], predicted, labels=list(range(c))).tolist()
    return {
        "videos": n,
        "classes": names,
        "multi_label": bool(multi_label),
        "top1": float(top1.mean()),
        "top5": float(top_k_hits(scores, rows, k).mean()),
        "top5_k": k,
        "mean_class_accuracy": float(np.mean(accuracies)),
        "map": mean_ap,
        "classes_without_positives": [name for name, ap in zip(names, aps, strict=True) if ap is None],
        "per_class": per_class,
        "confusion": confusion,
    }


def prediction_metrics(predictions: Sequence[Any], classes: Sequence[str], multi_label: bool) -> dict[str, Any]:
    """:func:`classification_metrics` of ``train.predict.VideoPrediction`` s (their aggregated ``scores``)."""
    if not predictions:
        raise ValueError("no predictions to score")
    scores = np.stack([np.asarray(p.scores, dtype=np.float64) for p in predictions])  # (N, C)
    result = classification_metrics(scores, [tuple(p.labels) for p in predictions], classes, multi_label)
    result["ids"] = [p.id for p in predictions]
    return result


def frame_accuracy(predictions: Sequence[Any], multi_label: bool) -> float:
    """Frame-level top-1: the share of every step of every clip of every video (``clip_logits`` (clips, T',
    classes)) whose own prediction is (one of) its video's label(s), as CHAM on UCF Sports and the ConvLSTM report
    score; a per-clip model's step is its clip."""
    hits = steps = 0
    for p in predictions:
        predicted = np.asarray(p.clip_logits).argmax(-1)  # (clips, T')
        hits += int(np.isin(predicted, p.labels if multi_label else p.labels[:1]).sum())
        steps += predicted.size
    return hits / steps if steps else float("nan")


def save_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write a metrics dict as indented JSON (NaN refused: JSON has none; use None)."""
    path = Path(path)
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: results are not plain JSON ({exc})") from exc
    atomic_write_text(path, text + "\n")
    return path


def save_confusion(matrix: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], csv_path: str | Path,
                   png_path: str | Path | None = None, title: str | None = None) -> Path:
    """The confusion matrix as CSV (header: "true \\ predicted" then class names; one row per true class)
    and, with ``png_path``, as a row-normalized image (see :func:`evaluate.figures.confusion_png`)."""
    matrix = np.asarray(matrix)
    csv_path = Path(csv_path)
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"{csv_path}: confusion matrix is {matrix.shape}, expected {len(classes)} x {len(classes)}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, matrix.tolist(), strict=True):
        writer.writerow([name, *row])
    atomic_write_text(csv_path, out.getvalue())
    if png_path is not None:
        from glimpse.evaluate.figures import confusion_png

        confusion_png(matrix, classes, png_path, title=title)
    return csv_path


def save_metrics(metrics: Mapping[str, Any], out_dir: str | Path, prefix: str = "test") -> dict[str, Path]:
    """Write ``{prefix}_metrics.json`` and, for single-label results, ``{prefix}_confusion.csv`` / ``.png``."""
    out_dir = Path(out_dir)
    paths = {"metrics": save_json(metrics, out_dir / f"{prefix}_metrics.json")}
    if metrics.get("confusion") is not None:
        csv_path, png_path = out_dir / f"{prefix}_confusion.csv", out_dir / f"{prefix}_confusion.png"
        save_confusion(metrics["confusion"], metrics["classes"], csv_path, png_path,
                       title=f"{prefix}: top-1 {metrics['top1']:.3f}")
        paths["confusion_csv"], paths["confusion_png"] = csv_path, png_path
    return paths
