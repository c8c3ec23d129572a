"""Command line of the extraction stage: ``python -m glimpse.extract --dataset NAME --root DIR --out STORE``."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from glimpse.errors import Command
from glimpse.store.layout import CODECS

log = logging.getLogger("extract")

#: Frames of the first video that random-init batch norm is calibrated on (see extract.backbones).
CALIBRATION_FRAMES = 8


def lab_store_path(lab: str | os.PathLike, config: Any) -> Path:
    """Where a lab root keeps the store of ``config``: LAB/<dataset>/<backbone>-<config hash>."""
    from glimpse.store.layout import config_hash

    return Path(lab) / config.dataset / f"{config.backbone}-{config_hash(config.to_dict())}"


class Progress:
    """A tqdm bar on a terminal (videos done / failed, frames per second, ETA), log lines otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.failed, self.frames = total, 0, 0, 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="video", desc="extract", dynamic_ncols=True)

    def __call__(self, outcome: dict[str, Any]) -> None:
        self.frames += outcome["frames"]
        if outcome["status"] != "failed":
            self.done += 1
        else:
            self.failed += 1
        if self.bar is not None:
            rate = self.frames / max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix(done=self.done, failed=self.failed, fps=f"{rate:.1f}")
            self.bar.update(1)
        else:
            log.info("%d/%d videos (%d failed): %s %s", self.done + self.failed, self.total, self.failed,
                     outcome["id"], outcome["status"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", required=True, help="Dataset adapter name (see extract.datasets.DATASETS).")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="The dataset's root folder.")
@click.option("--out", type=click.Path(), help="The store to write (created, or resumed).")
@click.option("--lab", type=click.Path(file_okay=False),
              help="A lab root instead of --out: the store goes to LAB/<dataset>/<backbone>-<config hash>, so the "
                   "same features asked twice land in the same store.")
@click.option("--frames", type=click.IntRange(min=1), help="N frames equally spaced over the whole video.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Resample every video to this frame rate.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Keep at most this many frames per video.")
@click.option("--size", type=click.IntRange(min=16), help="Input size S (frames resized to S x S). [backbone's]")
@click.option("--backbone", default="googlenet", help="googlenet | inception_v3 | vgg16 | vgg16_pool5 | resnet152")
@click.option("--weights", default="imagenet", help="imagenet (torchvision cache, TORCH_HOME) | none | PATH")
@click.option("--flow", default="none", type=click.Choice(["none", "tvl1", "farneback", "raft"]))
@click.option("--streams", default=None,
              help="Streams to extract, comma-separated names of the stream registry (glimpse.store.schema.STREAMS). "
                   "[rgb; rgb,flow,flow_cnn with --flow]")
@click.option("--flow-weights", default=None, help="State dict for the flow-stream CNN [same as --weights].")
@click.option("--raft-weights", default="none", help="RAFT weights for --flow raft: none | default | PATH.")
@click.option("--flow-size", type=click.IntRange(min=16), help="Shorter side flow is computed at. [source]")
@click.option("--codec", default=None, type=click.Choice(CODECS),
              help="How chunks are stored: zstd (1.18 bytes per value), lz4 (1.76, decodes ~2x faster) or none (2.0, "
                   "read without decoding; the fastest training reads). [zstd; a resumed store keeps its own]")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--gpus", default=None, help="N or all: a local worker per GPU, pinned to it. [all with cuda]")
@click.option("--batch-size", default=32, type=click.IntRange(min=1), help="Frames per CNN batch, across videos.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Local Dask workers. [one per core]")
@click.option("--sequential", is_flag=True, help="Decode, CNN and flow one after the other, a video per task.")
@click.option("--group", default=None, type=click.IntRange(min=1), help="Videos per Dask task. [a few per worker]")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (or DASK_SCHEDULER_ADDRESS).")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some videos failed.")
@click.option("--overwrite", is_flag=True, help="Replace a store made with another config.")
@click.option("--seed", default=0, help="Seed of the dataset's random protocol splits (ucf11, ucfsports).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(**opts: Any) -> None:
    """Extract frames, optical flow and CNN conv feature cubes from a dataset into a Zarr store."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = extract_dataset(**opts)
    click.echo(summary.report(), err=bool(summary.failed))
    if summary.failed and not opts["allow_failures"]:
        sys.exit(1)


def select_streams(streams: str | Sequence[str] | None, config: Any) -> tuple[str, ...] | None:
    """The registry names ``--streams`` selects for ``config``, in registry order (None: the default set of
    ``config.flow``); a usage error names an unknown stream or one that ``config`` cannot extract."""
    from glimpse.extract.pipeline import default_streams
    from glimpse.extract.streams import plan_streams
    from glimpse.store.schema import STREAMS

    if streams is None:
        return None
    wanted = [n.strip() for n in streams.split(",")] if isinstance(streams, str) else list(streams)
    unknown = [name for name in wanted if name not in STREAMS]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown stream {(unknown or [''])[0]!r}; streams are {', '.join(STREAMS)}",
                                 param_hint="'--streams'")
    names = tuple(name for name in STREAMS if name in wanted)
    try:
        plan_streams([STREAMS[name] for name in names], config)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--streams'") from None
    return None if names == default_streams(config.flow) else names


def extract_dataset(
    dataset: str,
    root: str,
    out: str | None = None,
    *,
    lab: str | None = None,
    frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    size: int | None = None,
    backbone: str = "googlenet",
    weights: str = "imagenet",
    flow: str = "none",
    streams: str | Sequence[str] | None = None,
    flow_weights: str | None = None,
    raft_weights: str = "none",
    flow_size: int | None = None,
    codec: str | None = None,
    device: str = "auto",
    gpus: str | int | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    sequential: bool = False,
    group: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    quiet: bool = True,
    client: Any = None,
    **_: Any,
):
    """Run one extraction (the CLI's body; tests call it with a ``client`` of their own)."""
    import torch

    from glimpse.extract.backbones import BACKBONES, weights_identity
    from glimpse.extract.datasets import DATASETS, load_dataset
    from glimpse.extract.pipeline import ExtractConfig, Runtime, run_extraction
    from glimpse.store.catalog import is_store

    if backbone not in BACKBONES:
        raise click.BadParameter(f"unknown {backbone!r}; choose from {sorted(BACKBONES)}", param_hint="backbone")
    if frames is not None and fps is not None:
        raise click.UsageError("--frames and --fps are exclusive: N equally spaced frames, or a fixed frame rate")
    from glimpse.cluster import ClusterError, dask_client, parse_gpus, plan_cluster, visible_gpus

    try:
        gpus = parse_gpus(gpus)
    except ClusterError as err:
        raise click.UsageError(str(err)) from None
    if device == "auto":
        device = "cuda" if gpus or torch.cuda.is_available() else "cpu"
    if gpus and device != "cuda":
        raise click.UsageError(f"--gpus runs on CUDA devices; it does not go with --device {device}")
    seeded = dataset in DATASETS and "seed" in inspect.signature(DATASETS[dataset]).parameters
    data = load_dataset(dataset, root, **({"seed": seed} if seeded else {}))
    records = sorted(data.videos, key=lambda r: r.id)
    present = [r for r in records if r.id not in set(data.missing)]
    calibration = (present[0].id, CALIBRATION_FRAMES) if weights == "none" and present else None
    config = ExtractConfig(
        dataset=dataset, backbone=backbone, weights=weights_identity(weights, backbone),
        size=size or BACKBONES[backbone].size, frames=frames, fps=fps, max_frames=max_frames, flow=flow,
        flow_cnn_weights="same" if flow_weights is None else weights_identity(flow_weights, backbone),
        raft_weights=weights_identity(raft_weights) if flow == "raft" else "none",
        flow_size=flow_size, calibration=calibration,
    )
    config = replace(config, streams=select_streams(streams, config))
    if (out is None) == (lab is None):
        raise click.UsageError("give exactly one of --out STORE and --lab ROOT")
    if lab is not None:
        out = str(lab_store_path(lab, config))
        status = "exists: finishing what is missing" if is_store(out) else "new"
        log.info("store for this config: %s (%s)", out, status)
    source = {"root": str(Path(root).resolve()), "weights": weights, "flow_weights": flow_weights,
              "raft_weights": raft_weights if flow == "raft" else None, "seed": seed if seeded else None,
              "batch_size": batch_size}  # batches are padded to it: a repair must batch alike to give the same bits
    cores = os.cpu_count() or 1
    try:  # with --device cuda and no --gpus, a worker per visible GPU, as before --gpus existed
        visible = visible_gpus() if gpus or (device == "cuda" and not workers) else 0
        plan = plan_cluster(workers, gpus or (-1 if device == "cuda" and not workers and visible else None),
                            cores, visible, default_workers=cores)
    except ClusterError as err:
        raise click.UsageError(str(err)) from None
    runtime = Runtime(
        weights_path=weights, flow_cnn_weights_path=flow_weights, raft_weights_path=raft_weights,
        device=device, batch_size=batch_size, threads=plan.threads,
        calibration_path=present[0].path if calibration else None, pipelined=not sequential, group=group,
        codec=codec,
    )
    progress = Progress(len(records), enabled=not quiet)
    try:
        if client is not None:
            return run_extraction(out, config, runtime, data.classes, records, client, overwrite, progress, source,
                                  data.multilabel)
        # a task whose worker dies twice (a decoder crash, not a lost machine) fails, not retried on every worker
        with dask_client(scheduler, plan, allowed_failures=1) as own:
            log.info("dask dashboard: %s", own.dashboard_link)
            return run_extraction(out, config, runtime, data.classes, records, own, overwrite, progress, source,
                                  data.multilabel)
    finally:
        progress.close()
