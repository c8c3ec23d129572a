"""Evaluating runs that exist: one run's metrics and figures, several runs' attention, a table's rows.

    evaluate_run(run_dir)                   -> metrics JSON/CSV/PNG + attention figures in run_dir/evaluation
    compare_runs([run_a, run_b], out)       -> their attention side by side (PNG strips, GIF, MP4)
    table_row(model, metrics) / format_table(rows, title) -> the comparison table's markdown

Evaluation trains nothing: the table and protocol, which train what is missing and then evaluate it, are
glimpse/experiments.py, above both stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.evaluate.figures import video_attention_figures
from glimpse.evaluate.localization import frame_attention, localization_scores
from glimpse.evaluate.metrics import frame_accuracy, prediction_metrics, save_metrics
from glimpse.evaluate.published import published_for
from glimpse.store import open_store
from glimpse.train.models import MODELS
from glimpse.train.predict import load_run, open_run_store, predict_run

EVALUATION_DIR = "evaluation"


def evaluate_run(run_dir: str | Path, role: str = "test", figures: int = 4, which: str = "best",
                 store: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Predict the ``role`` videos of a run's split with the model's own aggregation; save and return metrics.

    ``store``: where the run's store is now, when it moved (its config hash must be the run's); ``device``: where
    the model predicts ("auto": the GPU when one is visible).

    Writes ``run_dir/evaluation/<role>_metrics.json`` (top-1/5, frame-level top-1 ``frame_top1`` (each step's own
    prediction), the store's backbone, per-class accuracy and AP, mAP,
    confusion, attention localisation where the store has boxes), the confusion CSV/PNG and, for
    ``figures`` videos taken in turn from each class, attention strips (PNG), GIFs and MP4s blended
    over the re-decoded frames.
    """
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, which, device)
    found = open_run_store(run_dir, loaded.store, loaded.config_hash, store)
    predictions = list(predict_run(run_dir, role, which, loaded.device, found.path, loaded=loaded))
    if not predictions:
        raise ValueError(f"{run_dir}: no done video has role {role!r} in the run's split")
    metrics = prediction_metrics(predictions, loaded.classes, loaded.multi_label)
    metrics.update(run=str(run_dir), model=loaded.name, role=role, checkpoint=which, store=found.path,
                   frame_top1=frame_accuracy(predictions, loaded.multi_label),
                   backbone=found.streams[loaded.streams[0]].get("backbone"))
    entries = {v.id: v for v in found.videos}
    attended = [p for p in predictions if p.attention is not None]
    if attended and any(entries[p.id].boxes is not None for p in attended):
        metrics["localization"] = localization_scores(attended, entries, loaded.clip)
    out = run_dir / EVALUATION_DIR
    save_metrics(metrics, out, prefix=role)
    for stale in (out / "attention").glob("*_attention.*"):  # figures of an earlier evaluation of this run
        stale.unlink()
    for prediction in spread_over_classes(attended, figures):
        entry = entries[prediction.id]
        maps = frame_attention(prediction.attention, loaded.clip, entry.n_frames)  # (n_frames, K, K)
        video_attention_figures(entry, {loaded.name: maps}, out / "attention", classes=loaded.classes,
                                predicted={loaded.name: prediction.predicted})
    return metrics


def spread_over_classes(predictions: Sequence[Any], count: int) -> list[Any]:
    """``count`` predictions taken in turn from each true class (first label), in store order within a class."""
    by_class: dict[int, list[Any]] = {}
    for p in predictions:
        by_class.setdefault(p.labels[0] if p.labels else -1, []).append(p)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[Any] = []
    for rank in range(max(map(len, queues), default=0)):
        chosen += [queue[rank] for queue in queues if rank < len(queue)]
    return chosen[:count]


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None,
                 role: str = "test", videos: int = 4, which: str = "best") -> list[dict[str, Path]]:
    """Attention of several runs on one store side by side (e.g. regattn at lambda = 0 and lambda > 0, Fig. 6).

    For the first ``videos`` ``role`` videos that every run predicts, writes one stacked strip (PNG) and
    one side-by-side GIF and MP4 into ``out``; ``names`` label the runs (default: the run folders' names).
    """
    if len(run_dirs) < 2:
        raise ValueError(f"comparing attention needs at least two runs, got {len(run_dirs)}")
    names = list(names) if names else [Path(r).name for r in run_dirs]
    if len(names) != len(run_dirs) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct name per run: {names} for {len(run_dirs)} runs")
    loaded = [load_run(r, which) for r in run_dirs]
    stores = {str(Path(run.store).resolve()) for run in loaded}
    if len(stores) > 1:
        listed = ", ".join(sorted(stores))
        raise ValueError(f"runs {', '.join(map(str, run_dirs))} come from different stores ({listed})")
    for run_dir, run in zip(run_dirs, loaded, strict=True):
        if not MODELS[run.name].attention:
            raise ValueError(f"{run_dir}: model {run.name} gives no attention maps to compare")
    entries = {v.id: v for v in open_store(loaded[0].store).videos}
    maps: dict[str, dict[str, np.ndarray]] = {}  # video id -> run name -> (n_frames, K, K)
    predicted: dict[str, Any] = {}
    classes: dict[str, dict[str, int]] = {}  # video id -> run name -> predicted class
    for name, run_dir, run in zip(names, run_dirs, loaded, strict=True):
        for p in predict_run(run_dir, role, which, loaded=run):
            maps.setdefault(p.id, {})[name] = frame_attention(p.attention, run.clip, entries[p.id].n_frames)
            classes.setdefault(p.id, {})[name] = p.predicted
            predicted.setdefault(p.id, p)
    shared = [p for video_id, p in predicted.items() if len(maps[video_id]) == len(names)]
    if not shared:
        raise ValueError(f"no {role} video is predicted by every run of {', '.join(map(str, run_dirs))}")
    return [video_attention_figures(entries[p.id], {n: maps[p.id][n] for n in names}, out,
                                    classes=loaded[0].classes, predicted=classes[p.id])
            for p in spread_over_classes(shared, videos)]


def table_row(model: str, metrics: dict[str, Any], dataset: str = "") -> dict[str, Any]:
    """The numbers a comparison table shows for one evaluated run, and the paper's number on ``dataset``."""
    place = metrics.get("localization") or {}
    paper = published_for(model, dataset) if dataset else None
    return {"model": model, "paper": MODELS[model].paper, "top1": metrics.get("top1"), "map": metrics.get("map"),
            "frame_top1": metrics.get("frame_top1"),
            "published": paper.cell(metrics.get("backbone")) if paper else None,
            "mass": place.get("mass"), "uniform_mass": place.get("uniform_mass"), "hit": place.get("hit_rate"),
            "uniform_hit": place.get("uniform_hit_rate")}


def unfinished_row(model: str, status: str) -> dict[str, Any]:
    """The comparison table's row for a run that has no scores to show, saying why (``status``)."""
    return {"model": model, "unfinished": status}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    """Rows from :func:`table_row` as a markdown table like the papers' Table 1."""
    lines = [f"### {title}", "",
             "| model | top-1 accuracy | frame-level accuracy | mAP | published | attention mass in box (uniform) | "
             "pointing game (uniform) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "unfinished" in r:
            lines.append(f"| {r['model']} | {r['unfinished']} | - | - | - | - |")
            continue
        mass = "-" if r["mass"] is None else f"{r['mass']:.3f} ({r['uniform_mass']:.3f})"
        hit = "-" if r["hit"] is None else f"{r['hit']:.3f} ({r['uniform_hit']:.3f})"
        published = r.get("published") or "-"
        lines.append(f"| {r['model']} | {_cell(r['top1'])} | {_cell(r.get('frame_top1'))} | {_cell(r['map'])} | "
                     f"{published} | {mass} | {hit} |")
    return "\n".join(lines) + "\n"
