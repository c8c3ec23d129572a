"""Experiments: train, then evaluate. The layer above both stages (evaluation only evaluates runs it is given).

    comparison_table(store, run_root, ...)  -> every registered model on one store, a markdown table
    run_protocol(store, model, out, ...)    -> every fold of the dataset's protocol, mean and std
    run_demo(out)                           -> synthetic dataset -> store -> models -> table and figures

Their command lines are ``glimpse table``, ``glimpse protocol`` and ``glimpse demo`` (glimpse/cli.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from glimpse.evaluate.metrics import save_json
from glimpse.evaluate.published import published_for
from glimpse.evaluate.report import compare_runs, evaluate_run, format_table, table_row, unfinished_row
from glimpse.extract.api import FeatureRequest, RunOptions, extract_dataset
from glimpse.extract.synth import SynthConfig, make_synthetic
from glimpse.files import atomic_write_text
from glimpse.store import open_store
from glimpse.train.loop import resume_run, train_model
from glimpse.train.models import MODELS
from glimpse.train.models.regattn import RegAttentionConfig
from glimpse.train.run import RunDir

#: The demo's dataset and training settings: 192 videos (4 classes, decoys), 12 frames at 112 px, a 4 x 4 grid.
DEMO_SYNTH = {"classes": 4, "per_class": 48, "frames": 12, "size": 112, "seed": 3}
DEMO_FEATURES = {"backbone": "googlenet", "weights": "none", "size": 112, "frames": 12}
DEMO_BATCH = 16
DEMO_MODELS = ("avgpool_lstm", "softattn", "softattn_code", "regattn", "regattn_sqrt", "convattn")
DEMO_TRAIN = {"epochs": 30, "batch_size": 8, "lr": 1e-3, "seed": 1, "patience": 10, "workers": 0,
              "val_fraction": 0.15, "model_args": {"hidden": 64}}
#: Per row, what replaces DEMO_TRAIN: the ConvLSTM overfits 132 clips at lr 1e-3 and hidden 64; softattn_code is
#: Sharma's released-code attention (from the frame and h_{t-1}) with a 64-d attention layer; regattn gets N = 2
#: blocks of 2 x 2 cells (the paper's N = 4 on a 4 x 4 map would make every block one cell, and is refused), and
#: regattn_sqrt is the same model with the sqrt-mass block penalty, which the uniform map does not minimise.
DEMO_PER_MODEL = {"convattn": {"lr": 3e-4, "model_args": {"hidden": 32}, "sampling": "windows", "lr_drop_step": 0,
                               "standardize": "mean_std"},  # the README's numbers: before CHAM's baseline recipe
                  "softattn_code": {"model_args": {"hidden": 64, "att_dim": 64}},
                  "regattn": {"model_args": {"hidden": 64, "blocks": 2}},
                  "regattn_sqrt": {"model": "regattn",
                                   "model_args": {"hidden": 64, "blocks": 2, "penalty": "sqrt_mass", "lam": 0.1}}}
#: regattn trained again at these lambdas and drawn beside the table's run (Quan et al. Fig. 6).
DEMO_LAMBDAS = (0.0, 0.1)
#: The table trains with a store that fits this many bytes held in RAM (``cache_ram``): a small store's models then
#: start no DataLoader processes, each of which cost about 7 s per model on 2 cores; a larger store is read as usual.
TABLE_CACHE_RAM = 256 * 2**20


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


def ensure_trained(store_path: str | Path, model: str, run_dir: Path, **train_options: Any) -> None:
    """Leave a finished run of ``model`` in ``run_dir``: train it, or resume it on ``store_path`` when it was cut
    short (a run without a result.json that says it completed or stopped early is not finished)."""
    run = RunDir(run_dir)
    if run.finished:
        return
    if run.exists:
        resume_run(run_dir, store=store_path)
    else:
        train_model(store_path, model, run_dir, **train_options)


def comparison_table(store_path: str | Path, run_root: str | Path, models: Sequence[str] | None = None,
                     train_missing: bool = True, figures: int = 2,
                     per_model: Mapping[str, Mapping[str, Any]] | None = None, **train_options: Any) -> str:
    """Evaluate (training first where no finished run exists) every model on one store; write and return the table.

    Runs live in ``run_root/<dataset>-<row>``; the table goes to ``run_root/table-<dataset>.md``. A run that is
    not finished is resumed, or with ``train_missing=False`` shown as unfinished (epochs done of planned), and a
    failed one (a non-finite loss) as failed: never as a normal row. One line names each model before it trains.
    ``train_options`` go to every model's training (``cache_ram`` TABLE_CACHE_RAM unless given),
    ``per_model[row]`` replaces some of them for one row. A row
    may be a variant of a registered model under its own name: ``per_model[row]["model"]`` names the model
    (e.g. ``{"regattn_sqrt": {"model": "regattn", "model_args": {"penalty": "sqrt_mass"}}}``).
    """
    store = open_store(store_path)
    usable, skipped = supported_models(store_path)
    per_model = per_model or {}
    chosen = [m for m in (models or usable) if per_model.get(m, {}).get("model", m) in usable]
    rows = []
    for i, row in enumerate(chosen, 1):
        run_dir = Path(run_root) / f"{store.dataset}-{row}"
        run = RunDir(run_dir)
        options = {"cache_ram": TABLE_CACHE_RAM, **train_options, **per_model.get(row, {})}
        model = options.pop("model", row)
        failed = run.exists and (run.read_json("result.json") or {}).get("stopped")
        if failed and not run.finished:  # a failure resuming would repeat (a non-finite loss): shown, not retried
            rows.append(unfinished_row(row, f"failed: {failed} (see {run.file('events.log')})"))
            continue
        if not run.finished:
            if not train_missing:
                if run.exists:
                    done, planned = run.progress()
                    rows.append(unfinished_row(row, f"unfinished: {done} of {planned} epochs"))
                continue
            click.echo(f"table {i}/{len(chosen)}: {'resuming' if run.exists else 'training'} {row} -> {run_dir}")
            ensure_trained(store_path, model, run_dir, **options)
        metrics = evaluate_run(run_dir, figures=figures, store=store_path)
        rows.append({**table_row(model, metrics, store.dataset), "model": row})
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
        metrics = evaluate_run(run_dir, figures=0, store=store_path)
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


def run_demo(out: str | Path, workers: int | None = None) -> None:
    """The whole pipeline on the synthetic dataset, printing each step (the ``glimpse demo`` command).

    Writes the synthetic dataset, extracts calibrated random GoogLeNet cubes into a store, trains and evaluates
    DEMO_MODELS into the comparison table, then trains regattn at DEMO_LAMBDAS (and the paper's lambda) and
    draws their attention side by side in ``out/runs/compare-regattn-lambda/``.
    """
    out_dir = Path(out)
    data = out_dir / "data" / "synthetic"
    click.echo(f"demo 1/4: synthetic dataset -> {data}")
    try:
        make_synthetic(data, SynthConfig(**DEMO_SYNTH), progress=True)
    except FileExistsError as exc:  # a demo folder from another glimpse version
        raise click.ClickException(f"{exc}\nremove {out_dir} (or pass --out NEW) and run the demo again") from None
    click.echo(f"demo 2/4: calibrated random GoogLeNet cubes -> {out_dir / 'stores'}")
    summary = extract_dataset(FeatureRequest("synthetic", str(data), **DEMO_FEATURES),
                              RunOptions(lab=str(out_dir / "stores"), workers=workers, batch_size=DEMO_BATCH,
                                         progress=True))
    click.echo(summary.report())
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} videos failed")
    runs = out_dir / "runs"
    click.echo(f"demo 3/4: train and evaluate {', '.join(DEMO_MODELS)} -> {runs}")
    table = comparison_table(summary.store, runs, DEMO_MODELS, figures=4, per_model=DEMO_PER_MODEL, **DEMO_TRAIN)
    paper_lam, compared = RegAttentionConfig.lam, runs / "compare-regattn-lambda"
    lambdas = sorted({*DEMO_LAMBDAS, paper_lam})
    click.echo(f"demo 4/4: regattn at lambda = {', '.join(f'{lam:g}' for lam in lambdas)} side by side -> {compared}")
    regattn = {**DEMO_TRAIN, **DEMO_PER_MODEL["regattn"]}
    lambda_runs = {}
    for lam in lambdas:
        run = runs / "synthetic-regattn" if lam == paper_lam else runs / f"synthetic-regattn-lambda{lam:g}"
        settings = {**regattn, "model_args": {**regattn["model_args"], "lam": lam}}
        ensure_trained(summary.store, "regattn", run, **settings)
        lambda_runs[f"regattn lambda={lam:g}"] = run
    compare_runs(list(lambda_runs.values()), compared, list(lambda_runs))
    strips = sorted(runs.glob("synthetic-*/evaluation/attention/*.png"))
    click.echo("\n" + table)
    click.echo(f"attention strips ({len(strips)} PNG, with GIF and MP4): {runs}/synthetic-*/evaluation/attention/")
    click.echo(f"regattn at lambda = {', '.join(f'{lam:g}' for lam in lambdas)} side by side: {compared}/")
