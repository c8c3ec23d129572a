"""The GPU measurements of bench/gpu_check.sh, side by side in one process (``--dry``: tiny sizes on the CPU).

    python -m bench.gpu_measure --out OUT [--dry]

Extraction: GoogLeNet at 224 px, the whole pipelined extraction (decode threads, CNN, store writes) against
the bare model on the same fixed-size batches, in frames per second (bench_extract's overlap comparison, on
the device). Training: softattn from a store written with --codec none, in optimizer steps per second.
Writes OUT/gpu_measure.json and OUT/gpu_measure.md.
"""

from __future__ import annotations

import csv
import json
import tempfile
import warnings
from pathlib import Path

import click
import torch

from bench.bench_extract import _clock
from bench.bench_loading import make_store

#: sizes of the real measurement and of the dry run
FULL = {"device": "cuda", "size": 224, "batch": 64, "per_class": 4, "frames": 48, "rounds": 3, "threads": 4,
        "train": {"videos": 24, "frames": 90, "channels": 1024, "size": 7, "clip": 30, "batch": 16, "hidden": 512}}
DRY = {"device": "cpu", "size": 64, "batch": 8, "per_class": 2, "frames": 8, "rounds": 1, "threads": 1,
       "train": {"videos": 8, "frames": 12, "channels": 16, "size": 4, "clip": 6, "batch": 4, "hidden": 8}}


def sync(device: str) -> None:
    """Wait for the device's queued work, so that wall times include it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def extraction_rates(folder: Path, shape: dict) -> dict[str, float]:
    """Frames per second of the bare GoogLeNet on the pipeline's batches and of the whole pipelined extraction."""
    from glimpse.extract.config import ExtractConfig, Runtime
    from glimpse.extract.datasets import load_dataset
    from glimpse.extract.pipeline import extract_group, prepare_store, worker_models
    from glimpse.extract.synth import SynthConfig, make_synthetic

    device, batch = shape["device"], shape["batch"]
    data = make_synthetic(folder / "data", SynthConfig(classes=2, per_class=shape["per_class"],
                                                       frames=shape["frames"], size=112))
    dataset = load_dataset("synthetic", data)
    tasks = sorted(dataset.videos, key=lambda r: r.id)
    config = ExtractConfig(dataset="synthetic", backbone="googlenet", size=shape["size"])
    torch.set_num_threads(shape["threads"])  # both paths alike (two threads on two busy cores ran 5x slower than one)
    runtime = Runtime(batch_size=batch, threads=shape["threads"], device=device)
    x = worker_models(config, runtime)
    images = torch.cat([x.backbone.preprocess(x.decode(task)[0].frames) for task in tasks])  # (N, 3, S, S)

    def bare() -> None:
        with torch.inference_mode():  # as the pipeline runs it
            for start in range(0, len(images), batch):
                x.backbone.fixed_batch(images[start : start + batch], batch)
        sync(device)

    stores = iter(range(100))

    def whole() -> None:
        store = str(folder / f"store{next(stores)}")  # a fresh store each time: done videos are skipped
        prepare_store(store, config, dataset, overwrite=True, device=device)
        assert all(o.status == "done" for o in extract_group(store, tasks, config, runtime))
        sync(device)

    bare()  # warm-up: cuDNN picks its algorithms
    t_bare, t_whole = _clock(bare, shape["rounds"]), _clock(whole, shape["rounds"])
    return {"frames": len(images), "bare_frames_per_s": len(images) / t_bare,
            "whole_frames_per_s": len(images) / t_whole, "whole_over_bare": t_bare / t_whole}


def training_rate(folder: Path, shape: dict) -> dict[str, float]:
    """softattn's optimizer steps per second, one epoch of dense windows from a store of --codec none."""
    from glimpse.train.loop import train_model

    store = make_store(folder / "train-store", shape["train"], codec="none")
    train = shape["train"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_model(store, "softattn", folder / "run", epochs=1, batch_size=train["batch"], frames=train["clip"],
                    workers=0, progress=False, val_fraction=0, device=shape["device"],
                    model_args={"hidden": train["hidden"]})
    with open(folder / "run" / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    clips_per_s = float(row["clips_per_s"])
    return {"clips_per_s": clips_per_s, "steps_per_s": clips_per_s / train["batch"],
            "data_share": float(row["data_share"])}


def report(results: dict) -> str:
    """The measurements as markdown."""
    e, t = results["extraction"], results["training"]
    return "\n".join([
        f"# GPU check on {results['device_name']}{' (dry run: tiny sizes on the CPU)' if results['dry'] else ''}",
        "",
        f"Extraction, GoogLeNet at {results['shape']['size']} px, batch {results['shape']['batch']}, "
        f"{e['frames']} frames: bare model {e['bare_frames_per_s']:.0f} frames/s, whole pipelined extraction "
        f"{e['whole_frames_per_s']:.0f} frames/s, **{e['whole_over_bare']:.2f}x** the bare model.",
        "",
        f"Training softattn from a --codec none store: {t['steps_per_s']:.2f} steps/s "
        f"({t['clips_per_s']:.1f} clips/s, {100 * t['data_share']:.0f}% of the time waiting for data).",
        "",
    ])


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry", is_flag=True, help="Tiny sizes on the CPU: checks the script, numbers are meaningless.")
def main(out: Path, dry: bool) -> None:
    """Measure extraction and training on the device; write OUT/gpu_measure.json and .md."""
    shape = DRY if dry else FULL
    if not dry and not torch.cuda.is_available():
        raise click.ClickException("torch sees no CUDA device: run with --dry on a machine without one")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-measure-") as tmp:
        results = {"dry": dry, "shape": {k: v for k, v in shape.items() if k != "train"},
                   "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else "cpu",
                   "extraction": extraction_rates(Path(tmp) / "extract", shape),
                   "training": training_rate(Path(tmp), shape)}
    (out / "gpu_measure.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (out / "gpu_measure.md").write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
