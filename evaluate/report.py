"""Evaluating runs: one run's metrics and figures, the comparison table, and the papers' protocols.

    evaluate_run(run_dir)                   -> metrics JSON/CSV/PNG + attention figures in run_dir/evaluation
    compare_runs([run_a, run_b], out)       -> their attention side by side (PNG strips, GIF, MP4)
    comparison_table(store, run_root, ...)  -> every registered model on one store, a markdown table
    run_protocol(store, model, out, ...)    -> every fold of the dataset's protocol, mean and std
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from glimpse.evaluate.figures import video_attention_figures
from glimpse.evaluate.localization import frame_attention, localization_scores
from glimpse.evaluate.metrics import prediction_metrics, save_json, save_metrics
from glimpse.evaluate.published import published_for
from glimpse.files import atomic_write_text
from glimpse.store import open_store
from glimpse.train.models import MODELS
from glimpse.train.predict import load_run, predict_run

EVALUATION_DIR = "evaluation"


def evaluate_run(run_dir: str | Path, role: str = "test", figures: int = 4, which: str = "best") -> dict[str, Any]:
    """Predict the ``role`` videos of a run's split with the model's own aggregation; save and return metrics.

    Writes ``run_dir/evaluation/<role>_metrics.json`` (top-1/5, per-class accuracy and AP, mAP,
    confusion, attention localisation where the store has boxes), the confusion CSV/PNG and, for
    ``figures`` videos taken in turn from each class, attention strips (PNG), GIFs and MP4s blended
    over the re-decoded frames.
    """
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, which)
    predictions = list(predict_run(run_dir, role, which, loaded=loaded))
    if not predictions:
        raise ValueError(f"{run_dir}: no done video has role {role!r} in the run's split")
    metrics = prediction_metrics(predictions, loaded.classes, loaded.multi_label)
    metrics.update(run=str(run_dir), model=loaded.name, role=role, checkpoint=which, store=loaded.store)
    entries = {v.id: v for v in open_store(loaded.store).videos}
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
        video_attention_figures(entry, {loaded.name: maps}, out / "attention")
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
    predicted = {}
    for name, run_dir, run in zip(names, run_dirs, loaded, strict=True):
        for p in predict_run(run_dir, role, which, loaded=run):
            maps.setdefault(p.id, {})[name] = frame_attention(p.attention, run.clip, entries[p.id].n_frames)
            predicted.setdefault(p.id, p)
    shared = [p for video_id, p in predicted.items() if len(maps[video_id]) == len(names)]
    if not shared:
        raise ValueError(f"no {role} video is predicted by every run of {', '.join(map(str, run_dirs))}")
    return [video_attention_figures(entries[p.id], {n: maps[p.id][n] for n in names}, out)
            for p in spread_over_classes(shared, videos)]


def table_row(model: str, metrics: dict[str, Any], dataset: str = "") -> dict[str, Any]:
    """The numbers a comparison table shows for one evaluated run, and the paper's number on ``dataset``."""
    place = metrics.get("localization") or {}
    paper = published_for(model, dataset) if dataset else None
    return {"model": model, "paper": MODELS[model].paper, "top1": metrics.get("top1"), "map": metrics.get("map"),
            "published": paper.cell() if paper else None,
            "mass": place.get("mass"), "uniform_mass": place.get("uniform_mass"), "hit": place.get("hit_rate"),
            "uniform_hit": place.get("uniform_hit_rate")}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    """Rows from :func:`table_row` as a markdown table like the papers' Table 1."""
    lines = [f"### {title}", "",
             "| model | top-1 accuracy | mAP | published | attention mass in box (uniform) | pointing game (uniform) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mass = "-" if r["mass"] is None else f"{r['mass']:.3f} ({r['uniform_mass']:.3f})"
        hit = "-" if r["hit"] is None else f"{r['hit']:.3f} ({r['uniform_hit']:.3f})"
        published = r.get("published") or "-"
        lines.append(f"| {r['model']} | {_cell(r['top1'])} | {_cell(r['map'])} | {published} | {mass} | {hit} |")
    return "\n".join(lines) + "\n"


def supported_models(store_path: str | Path) -> tuple[list[str], dict[str, str]]:
    """Registered models the store can feed, and why the others cannot (a missing stream)."""
    streams = set(open_store(store_path).streams)
    usable, skipped = [], {}
    for name, spec in MODELS.items():
        missing = [s for s in spec.streams if s not in streams]
        if missing:
            skipped[name] = f"needs stream {', '.join(missing)} (extract with --flow)"
        else:
            usable.append(name)
    return usable, skipped


def ensure_trained(store_path: str | Path, model: str, run_dir: Path, **train_options: Any) -> bool:
    """Train ``model`` into ``run_dir`` unless a run there has a best checkpoint (resume one that was cut short).

    Returns False when no run exists and ``train_options`` says ``train=False``.
    """
    from glimpse.train.loop import resume_run, train_model
    from glimpse.train.run import RunDir

    run = RunDir(run_dir)
    if run.file("best.pt").is_file():
        return True
    if not train_options.pop("train", True):
        return False
    if run.exists:
        resume_run(run_dir)
    else:
        train_model(store_path, model, run_dir, **train_options)
    return True


def comparison_table(store_path: str | Path, run_root: str | Path, models: Sequence[str] | None = None,
                     train_missing: bool = True, figures: int = 2,
                     per_model: Mapping[str, Mapping[str, Any]] | None = None, **train_options: Any) -> str:
    """Evaluate (training first where no finished run exists) every model on one store; write and return the table.

    Runs live in ``run_root/<dataset>-<row>``; the table goes to ``run_root/table-<dataset>.md``.
    ``train_options`` go to every model's training, ``per_model[row]`` replaces some of them for one row. A row
    may be a variant of a registered model under its own name: ``per_model[row]["model"]`` names the model
    (e.g. ``{"regattn_sqrt": {"model": "regattn", "model_args": {"penalty": "sqrt_mass"}}}``).
    """
    store = open_store(store_path)
    usable, skipped = supported_models(store_path)
    per_model = per_model or {}
    chosen = [m for m in (models or usable) if per_model.get(m, {}).get("model", m) in usable]
    rows = []
    for row in chosen:
        run_dir = Path(run_root) / f"{store.dataset}-{row}"
        options = {**train_options, **per_model.get(row, {})}
        model = options.pop("model", row)
        if not ensure_trained(store_path, model, run_dir, train=train_missing, **options):
            continue
        rows.append({**table_row(model, evaluate_run(run_dir, figures=figures), store.dataset), "model": row})
    notes = "".join(f"\n- {name}: not run, {why}" for name, why in skipped.items() if not models or name in models)
    text = format_table(rows, f"{store.dataset}: test split, store {Path(store_path).name}") + notes + "\n"
    out = Path(run_root) / f"table-{store.dataset}.md"
    atomic_write_text(out, text)
    return text


def run_protocol(store_path: str | Path, model: str, out: str | Path, **train_options: Any) -> dict[str, Any]:
    """Train and evaluate ``model`` on every fold the store's dataset defines; mean and std of test accuracy.

    The folds are the store's splits: HMDB-51 and UCF-101 their 3 official splits, UCF-11 its 5
    seeded 15/10 group splits, UCF Sports its seeded 75/25 split, Olympic Sports its official one.
    """
    store = open_store(store_path)
    folds = sorted({name for v in store.videos for name in v.splits}, key=lambda k: (len(k), k))
    per_fold = {}
    for fold in folds:
        run_dir = Path(out) / f"split{fold}"
        ensure_trained(store_path, model, run_dir, split=fold, **train_options)
        metrics = evaluate_run(run_dir, figures=0)
        per_fold[fold] = {"top1": metrics["top1"], "map": metrics.get("map")}
    top1 = np.array([m["top1"] for m in per_fold.values()], dtype=np.float64)
    result = {"dataset": store.dataset, "model": model, "folds": per_fold, "mean_top1": float(top1.mean()),
              "std_top1": float(top1.std(ddof=1)) if len(top1) > 1 else 0.0}
    maps = [m["map"] for m in per_fold.values() if m["map"] is not None]
    if maps:
        result.update(mean_map=float(np.mean(maps)), std_map=float(np.std(maps, ddof=1)) if len(maps) > 1 else 0.0)
    paper = published_for(model, store.dataset)
    result["published"] = paper.cell() if paper else None
    save_json(result, Path(out) / "protocol.json")
    return result


def protocol_text(result: dict[str, Any]) -> str:
    """One readable block for the terminal."""
    folds = ", ".join(f"split {k}: {v['top1']:.3f}" for k, v in result["folds"].items())
    published = f"; published: {result['published']}" if result.get("published") else ""
    return (f"{result['dataset']} / {result['model']}: top-1 {result['mean_top1']:.3f} +- {result['std_top1']:.3f} "
            f"over {len(result['folds'])} folds ({folds}){published}")

