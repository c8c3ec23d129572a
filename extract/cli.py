"""Command line of the extraction stage: ``python -m glimpse.extract --dataset NAME --root DIR --out STORE``.

Each option fills a field of :class:`~glimpse.extract.api.FeatureRequest` (what decides the features) or
:class:`~glimpse.extract.api.RunOptions` (where the store goes, how the work runs); choices come from the
registries (datasets, backbones, flow methods, streams, codecs).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

import click

from glimpse.choices import DEVICES, RegistryChoice
from glimpse.errors import Command
from glimpse.extract.api import FLOW_CHOICES, FeatureRequest, RunOptions, extract_dataset
from glimpse.extract.backbones import BACKBONES, TORCHVISION
from glimpse.extract.datasets import DATASETS
from glimpse.store.claims import CLAIMS
from glimpse.store.layout import CODECS
from glimpse.store.schema import STREAMS


class BackboneChoice(RegistryChoice):
    """A registered backbone, or ``torchvision:NAME`` (checked by the API, which builds its graph)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.startswith(TORCHVISION):
            return value
        return super().convert(value, param, ctx)


def _names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(name.strip() for name in value.split(","))


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", required=True, type=RegistryChoice(DATASETS), help="Dataset adapter.")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="The dataset's root folder.")
@click.option("--out", type=click.Path(), help="The store to write (created, or resumed).")
@click.option("--lab", type=click.Path(file_okay=False),
              help="A lab root instead of --out: the store goes to LAB/<dataset>/<backbone>-<config hash>, so the "
                   "same features asked twice land in the same store.")
@click.option("--frames", type=click.IntRange(min=1), help="N frames equally spaced over the whole video.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Resample every video to this frame rate.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Keep at most this many frames per video.")
@click.option("--clip-frames", type=click.IntRange(min=1),
              help="Video backbones: decoded frames per clip, a stored step per clip. [16]")
@click.option("--clip-stride", type=click.IntRange(min=1),
              help="Video backbones: decoded frames from one clip's start to the next. [--clip-frames]")
@click.option("--size", type=click.IntRange(min=16), help="Input size S (frames resized to S x S). [backbone's]")
@click.option("--backbone", default="googlenet", type=BackboneChoice(BACKBONES),
              help="Network of the feature cubes: a registered one, or torchvision:NAME (any torchvision "
                   "classification network) with --layer.")
@click.option("--layer", default=None,
              help="Graph node to cut the backbone at (torchvision's get_graph_node_names). [the backbone's]")
@click.option("--weights", default="imagenet", help="imagenet (torchvision cache, TORCH_HOME) | none | PATH")
@click.option("--flow", default="none", type=RegistryChoice(FLOW_CHOICES))
@click.option("--streams", default=None, callback=_names,
              help=f"Streams to extract, comma-separated: {', '.join(STREAMS)}. [rgb; rgb,flow,flow_cnn with --flow]")
@click.option("--flow-weights", default=None,
              help="State dict for the flow-stream CNN: flow_cnn's [same as --weights], or with flow_stack a "
                   "flow-trained network with a 2L-channel first layer [cross-modality from --weights].")
@click.option("--flow-stack", default=10, type=click.IntRange(min=1),
              help="flow_stack: L flow fields (x and y: 2L channels) stacked from each frame.")
@click.option("--raft-weights", default="none", help="RAFT weights for --flow raft: none | default | PATH.")
@click.option("--flow-size", type=click.IntRange(min=16), help="Shorter side flow is computed at. [source]")
@click.option("--codec", default=None, type=RegistryChoice(CODECS),
              help="How chunks are stored: zstd (1.18 bytes per value), lz4 (1.76, decodes ~2x faster) or none (2.0, "
                   "read without decoding; the fastest training reads). [zstd; a resumed store keeps its own]")
@click.option("--device", default="auto", type=RegistryChoice(DEVICES))
@click.option("--gpus", default=None, help="N or all: a local worker per GPU, pinned to it. [all with cuda]")
@click.option("--batch-size", default=32, type=click.IntRange(min=1), help="Frames per CNN batch, across videos.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Local Dask workers. [one per core]")
@click.option("--sequential", is_flag=True, help="Decode, CNN and flow one after the other, a video per task.")
@click.option("--group", default=None, type=click.IntRange(min=1), help="Videos per Dask task. [a few per worker]")
@click.option("--decode-threads", default=None, type=click.IntRange(min=1),
              help="Threads decoding ahead of the CNN in each worker (never changes a value). [the worker's cores]")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (or DASK_SCHEDULER_ADDRESS).")
@click.option("--claims", default="auto", type=RegistryChoice(CLAIMS),
              help="Where each video is claimed by one writer: flock (a lock file in the store), scheduler (a lease "
                   "on the run's Dask scheduler: for file systems without flock, e.g. Lustre noflock, or flock "
                   "coherent within one node only; it keeps apart the runs sharing that --scheduler), or auto "
                   "(flock where the store's file system supports it).")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some videos failed.")
@click.option("--overwrite", is_flag=True, help="Replace a store made with another config.")
@click.option("--other-device", is_flag=True,
              help="Go on with a store extracted on another kind of device (cpu / cuda), mixing their features.")
@click.option("--seed", default=0, help="Seed of the dataset's random protocol splits (ucf11, ucfsports).")
@click.option("--classes", default=None, callback=_names, metavar="A,B,...",
              help="Only these classes of the dataset (labels follow this order). [all]")
@click.option("--quiet", is_flag=True, help="No progress bar and no log lines: warnings, errors and the summary only.")
@click.option("--verbose", is_flag=True, help="Show Dask's own log lines.")
def main(allow_failures: bool, quiet: bool, **opts: Any) -> None:
    """Extract frames, optical flow and CNN conv feature cubes from a dataset into a Zarr store."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    request = FeatureRequest(**{f.name: opts.pop(f.name) for f in dataclasses.fields(FeatureRequest)})
    summary = extract_dataset(request, RunOptions(**opts, progress=not quiet))
    click.echo(summary.report(), err=bool(summary.failed))
    if summary.failed and not allow_failures:
        sys.exit(1)
