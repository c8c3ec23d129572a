"""Video-level metrics: hand-computed tiny cases, scikit-learn on seeded random inputs, files written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    recall_score,
    top_k_accuracy_score,
)

from glimpse.evaluate.metrics import classification_metrics, prediction_metrics, save_confusion, save_json, save_metrics
from glimpse.train.predict import VideoPrediction

CLASSES3 = ["a", "b", "c"]

# 4 videos, 3 classes: v0 right, v1 second best, v2 right, v3 ranked last (see the expected values below)
HAND_SCORES = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
HAND_LABELS = [0, 1, 2, 0]


def test_single_label_by_hand():
    m = classification_metrics(HAND_SCORES, HAND_LABELS, CLASSES3, multi_label=False)
    assert m["videos"] == 4 and not m["multi_label"]
    assert m["top1"] == pytest.approx(0.5)
    assert m["top5_k"] == 3 and m["top5"] == pytest.approx(1.0)  # top-5 clipped to the 3 classes
    assert {n: (v["accuracy"], v["count"]) for n, v in m["per_class"].items()} == {
        "a": (0.5, 2), "b": (0.0, 1), "c": (1.0, 1)}  # fmt: skip
    assert m["mean_class_accuracy"] == pytest.approx(0.5)
    assert m["confusion"] == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    # class a: ranks v0 (+), v1 (-), v3 (+): precisions 1 and 2/3; class b: v3 (-), v1 (+): 1/2; class c: v2 first
    aps = {n: v["ap"] for n, v in m["per_class"].items()}
    assert aps == pytest.approx({"a": 5 / 6, "b": 0.5, "c": 1.0})
    assert m["map"] == pytest.approx(7 / 9)
    assert m["classes_without_positives"] == []


def test_multi_label_by_hand_with_a_class_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.6, 0.5, 0.2], [0.2, 0.8, 0.4]])
    labels = [(0, 1), (1,), (0,)]
    m = classification_metrics(scores, labels, CLASSES3, multi_label=True)
    assert m["multi_label"] and m["confusion"] is None
    assert m["top1"] == pytest.approx(1 / 3)  # only v0's top class (a) is one of its labels
    assert m["per_class"]["a"] == {"accuracy": 0.5, "count": 2, "ap": pytest.approx(5 / 6)}
    assert m["per_class"]["b"] == {"accuracy": 0.5, "count": 2, "ap": pytest.approx(7 / 12)}
    assert m["per_class"]["c"] == {"accuracy": None, "count": 0, "ap": None}
    assert m["classes_without_positives"] == ["c"]
    assert m["map"] == pytest.approx(17 / 24)  # (5/6 + 7/12) / 2: class c left out, not counted as 0


def test_top5_by_hand_on_ten_classes():
    scores = np.tile(np.linspace(1.0, 0.1, 10), (2, 1))  # class i ranked i-th
    m = classification_metrics(scores, [4, 5], [str(i) for i in range(10)], multi_label=False)
    assert m["top5_k"] == 5
    assert m["top5"] == pytest.approx(0.5)  # rank 5 is in, rank 6 is out
    assert m["top1"] == 0.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_single_label_against_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    n, c = 80, 9
    scores = rng.random((n, c))
    labels = rng.integers(0, c, n)
    labels[labels == 3] = 4  # class 3 has no video
    classes = [f"class{i}" for i in range(c)]
    m = classification_metrics(scores, labels, classes, multi_label=False)
    assert m["top1"] == pytest.approx(top_k_accuracy_score(labels, scores, k=1, labels=range(c)))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=range(c)))
    predicted = scores.argmax(1)
    assert m["confusion"] == confusion_matrix(labels, predicted, labels=range(c)).tolist()
    present = [i for i in range(c) if (labels == i).any()]
    recall = recall_score(labels, predicted, labels=present, average=None)
    assert [m["per_class"][classes[i]]["accuracy"] for i in present] == pytest.approx(recall.tolist())
    assert m["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    truth = np.eye(c)[labels]  # (N, C)
    expected = average_precision_score(truth[:, present], scores[:, present], average=None)
    assert [m["per_class"][classes[i]]["ap"] for i in present] == pytest.approx(expected.tolist())
    assert m["map"] == pytest.approx(expected.mean())
    assert m["per_class"]["class3"] == {"accuracy": None, "count": 0, "ap": None}
    assert m["classes_without_positives"] == ["class3"]


def test_multi_label_against_sklearn_on_random_scores():
    rng = np.random.default_rng(1)
    n, c = 60, 6
    truth = (rng.random((n, c)) < 0.3).astype(int)
    truth[:, 5] = 0  # class 5 never present
    truth[truth.sum(1) == 0, 0] = 1  # every video has a label
    labels = [tuple(np.flatnonzero(row)) for row in truth]
    scores = rng.random((n, c))
    m = classification_metrics(scores, labels, list("uvwxyz"), multi_label=True)
    expected = average_precision_score(truth[:, :5], scores[:, :5], average="macro")
    assert m["map"] == pytest.approx(expected)
    assert m["top1"] == pytest.approx(np.mean(truth[np.arange(n), scores.argmax(1)]))
    assert m["per_class"]["z"]["ap"] is None


def test_multi_label_flag_for_a_subset_with_one_label_each():
    m = classification_metrics(HAND_SCORES, [(lab,) for lab in HAND_LABELS], CLASSES3, multi_label=True)
    assert m["multi_label"] and m["confusion"] is None and m["top1"] == pytest.approx(0.5)


@pytest.mark.parametrize("scores, labels, message", [
    (np.zeros((4, 2)), HAND_LABELS, "scores must be (videos, 3 classes)"),
    (HAND_SCORES, [0, 1, 2], "3 label entries for 4 score rows"),
    (HAND_SCORES, [0, 1, 3, 0], "outside 0..2"),
    (np.where(np.eye(4, 3) > 0, np.nan, HAND_SCORES), HAND_LABELS, "non-finite"),
    (np.zeros((0, 3)), [], "no videos"),
])  # fmt: skip
def test_bad_inputs_are_refused(scores, labels, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        classification_metrics(scores, labels, CLASSES3, multi_label=False)


def test_several_labels_need_multi_label():
    with pytest.raises(ValueError, match="several labels"):
        classification_metrics(HAND_SCORES, [(0, 1), (1,), (2,), (0,)], CLASSES3, multi_label=False)


def test_prediction_metrics_reads_video_predictions():
    predictions = [VideoPrediction(f"v{i}", (lab,), s, int(s.argmax()), np.zeros((1, 1, 3)), None, 0.0)
                   for i, (s, lab) in enumerate(zip(HAND_SCORES, HAND_LABELS, strict=True))]
    m = prediction_metrics(predictions, CLASSES3, multi_label=False)
    assert m["ids"] == ["v0", "v1", "v2", "v3"]
    assert m["top1"] == pytest.approx(0.5) and m["map"] == pytest.approx(7 / 9)


def test_save_metrics_writes_json_and_confusion(tmp_path):
    m = classification_metrics(HAND_SCORES, HAND_LABELS, CLASSES3, multi_label=False)
    paths = save_metrics(m, tmp_path / "run", prefix="test")
    assert json.loads(paths["metrics"].read_text()) == m
    with open(paths["confusion_csv"]) as f:
        rows = list(csv.reader(f))
    assert rows == [["true \\ predicted", "a", "b", "c"], ["a", "1", "1", "0"], ["b", "1", "0", "0"],
                    ["c", "0", "0", "1"]]
    with Image.open(paths["confusion_png"]) as image:
        assert image.format == "PNG" and min(image.size) >= 300


def test_multi_label_results_have_no_confusion_files(tmp_path):
    m = classification_metrics(HAND_SCORES, [(0, 1), (1,), (2,), (0,)], CLASSES3, multi_label=True)
    assert set(save_metrics(m, tmp_path)) == {"metrics"}


def test_save_refuses_nan_and_bad_matrix(tmp_path):
    with pytest.raises(ValueError, match="not plain JSON"):
        save_json({"top1": float("nan")}, tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"c\.csv: confusion matrix is \(2, 2\), expected 3 x 3"):
        save_confusion(np.eye(2), CLASSES3, tmp_path / "c.csv")
