"""Average precision, the one implementation: training's model selection (mAP on Hollywood2) and the evaluation
stage's reports (per-class AP and mAP of every dataset) both call :func:`average_precisions`.

It lives in train/ because evaluation may import training and not the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def multi_hot(labels: Sequence[Sequence[int]], classes: int) -> np.ndarray:
    """(N, classes) 0/1 int targets from each video's label tuple."""
    hot = np.zeros((len(labels), classes), dtype=np.int64)
    for i, labs in enumerate(labels):
        hot[i, list(labs)] = 1
    return hot


def average_precisions(truth: np.ndarray, scores: np.ndarray) -> tuple[list[float | None], float | None]:
    """Per-class AP of ``scores`` (N, C) against 0/1 ``truth`` (N, C), one class against the rest (scikit-learn's
    ``average_precision_score``), and mAP: their mean. A class with no positive video has no AP (None) and is left
    out of the mean; mAP is None when no class has one."""
    from sklearn.metrics import average_precision_score

    aps = [float(average_precision_score(truth[:, j], scores[:, j])) if truth[:, j].any() else None
           for j in range(truth.shape[1])]
    present = [ap for ap in aps if ap is not None]
    return aps, (float(np.mean(present)) if present else None)
