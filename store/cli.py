"""Command line of the store stage (``python -m glimpse.store``, ``glimpse store``): the lab's tools for shared stores.

    python -m glimpse.store ls [ROOT] [--json]           every store under ROOT (default $STORE_ROOT or stores/)
    python -m glimpse.store info PATH [--json]           the full provenance of one store
    python -m glimpse.store verify PATH                  read every done video back and check it; exit 1 if any is bad
    python -m glimpse.store export PATH OUT.h5 [--stream rgb] [--split 1] [--dtype float32]
    python -m glimpse.store import IN.h5 OUT_STORE --dataset NAME
    python -m glimpse.store recode PATH OUT --codec none a copy with another codec (none: training reads, no decoding)
    python -m glimpse.store upgrade PATH                 bring a store of an older schema version up to date
    python -m glimpse.store gc PATH                      remove what crashed writers left (safe during extractions)
    python -m glimpse.store reindex PATH                 rebuild the video index from every video's attributes
    python -m glimpse.store repair PATH [--dry-run]      re-queue bad and failed videos and extract them again

Nothing here imports torch (but repair, which runs the extraction); h5py and tqdm only where used.
"""

from __future__ import annotations

import json
import sys

import click

from glimpse.choices import RegistryChoice
from glimpse.errors import Group
from glimpse.store.layout import CODECS, EXPORT_DTYPES


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The store stage: list, describe, verify, export, import, recode, clean and repair feature stores."""


@main.command("ls")
@click.argument("root", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for scripts.")
def ls(root: str | None, as_json: bool) -> None:
    """List every store under ROOT (default: $STORE_ROOT, else stores/)."""
    from glimpse.store.catalog import default_root, format_listing, list_stores

    root = root or default_root()
    rows = list_stores(root)
    click.echo(json.dumps(rows, indent=2) if as_json else format_listing(rows, root))


@main.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def info(path: str, as_json: bool) -> None:
    """Print the full provenance of the store at PATH: config, versions, weights, streams, counts, failures."""
    from glimpse.store.catalog import format_info, store_info

    described = store_info(path)
    click.echo(json.dumps(described, indent=2) if as_json else format_info(described))


@main.command("verify")
@click.argument("path")
@click.option("--sources", is_flag=True, help="Also check that every video's source file is the one extracted.")
@click.option("--root", default=None, help="With --sources: where the dataset root is now, if it moved.")
def verify(path: str, sources: bool, root: str | None) -> None:
    """Read every done video of the store at PATH and check dtype, shapes, frame counts, finiteness and checksums.

    Exits 1 with every bad video and its reasons, 0 with a one-line summary when all are sound.
    """
    from glimpse.store.verify import run_verify

    result = run_verify(path, progress=True, sources=sources, root=root)
    click.echo(result.report(), err=not result.ok)
    if not result.ok:
        sys.exit(1)


@main.command("export")
@click.argument("path")
@click.argument("out")
@click.option("--stream", default="rgb", show_default=True, help="rgb | flow_cnn | flow")
@click.option("--split", default=None, help="The official split whose train / test roles are written. [1]")
@click.option("--dtype", type=RegistryChoice(EXPORT_DTYPES), default="float32", show_default=True)
def export(path: str, out: str, stream: str, split: str | None, dtype: str) -> None:
    """Export the store at PATH to OUT.h5 plus <role>_framenum/filename/labels.txt beside it: the HDF5 layout of
    Sharma et al.'s soft-attention code (see store/hdf5.py)."""
    from glimpse.store.hdf5 import export_hdf5

    summary = export_hdf5(path, out, stream=stream, split=split, dtype=dtype, progress=True)
    roles = ", ".join(f"{role} {r['videos']} videos / {r['frames']} frames" for role, r in summary["roles"].items())
    click.echo(f"{out}: split {summary['split']}, {roles}; {len(summary['left_out'])} videos not done left out")


@main.command("import")
@click.argument("h5_path")
@click.argument("out")
@click.option("--dataset", required=True, help="The dataset name the new store records.")
@click.option("--stream", default=None, help="Stream name in the new store. [the exported one, else rgb]")
@click.option("--overwrite", is_flag=True, help="Replace a store made from another file or config.")
@click.option("--codec", default=None, type=RegistryChoice(CODECS), help="How chunks are stored (see 'recode'). [zstd]")
def import_(h5_path: str, out: str, dataset: str, stream: str | None, overwrite: bool, codec: str | None) -> None:
    """Build a new store at OUT from an HDF5 file written by 'export' (and its side text files)."""
    from glimpse.store.hdf5 import import_hdf5

    counts = import_hdf5(h5_path, out, dataset=dataset, stream=stream, overwrite=overwrite, codec=codec)
    click.echo(f"{out}: imported " + ", ".join(f"{role} {n} videos" for role, n in counts.items()))


@main.command("recode")
@click.argument("path")
@click.argument("out")
@click.option("--codec", required=True, type=RegistryChoice(CODECS),
              help="How the copy stores chunks: none reads fastest (2 bytes per value), zstd is smallest.")
def recode(path: str, out: str, codec: str) -> None:
    """Copy the store at PATH to OUT with its chunks stored by another codec (values and config hash unchanged).

    Extract once with zstd to share; keep a --codec none copy where a GPU trains, whose reads need no decoding.
    An interrupted copy is finished by running the same command again.
    """
    from glimpse.store.catalog import disk_bytes
    from glimpse.store.maintenance import recode_store

    counts = recode_store(path, out, codec, progress=True)
    click.echo(f"{out}: {counts['done']} videos copied with codec {codec} ({disk_bytes(out) / 2**20:.1f} MB; "
               f"{path} {disk_bytes(path) / 2**20:.1f} MB), {counts['failed']} failures copied, "
               f"{counts['pending']} pending videos left pending")


@main.command("gc")
@click.argument("path")
def gc(path: str) -> None:
    """Remove what crashed writers left in the store at PATH (half-written videos, temporary files).

    Safe during extractions: videos a live run is writing are left alone.
    """
    from glimpse.store.maintenance import collect_garbage

    click.echo(collect_garbage(path).report())


@main.command("upgrade")
@click.argument("path")
def upgrade(path: str) -> None:
    """Bring the store at PATH to this glimpse's schema version in place (only its root metadata changes)."""
    from glimpse.store.maintenance import upgrade_store
    from glimpse.store.schema import SCHEMA_VERSION

    old = upgrade_store(path)
    click.echo(f"{path}: schema version {SCHEMA_VERSION}" + (" already" if old == SCHEMA_VERSION else
                                                             f" (was {old})"))


@main.command("reindex")
@click.argument("path")
def reindex(path: str) -> None:
    """Rebuild the video index of the store at PATH from every video's attributes (safe during extractions)."""
    from collections import Counter

    from glimpse.store.maintenance import reindex_store

    counts = Counter(reindex_store(path).statuses())
    click.echo(f"{path}: index rebuilt, " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


@main.command("repair")
@click.argument("path")
@click.option("--root", default=None, help="The dataset root, if it moved since extraction.")
@click.option("--weights", default=None, help="The weights file, if the store used one (recorded as sha256).")
@click.option("--dry-run", is_flag=True, help="Show what would be re-queued and the extraction, change nothing.")
def repair(path: str, root: str | None, weights: str | None, dry_run: bool) -> None:
    """Re-queue every bad (per verify) and failed video of PATH and extract them again with the store's own config.

    The store's part (verify, reset) is store.maintenance; the extraction is the extraction stage's API, the one
    place where this command line hands over to another stage.
    """
    from glimpse.store.maintenance import extraction_options, reset_videos, videos_to_repair
    from glimpse.store.verify import verify_store

    features, run = extraction_options(path, root, weights)
    bad = verify_store(path)
    todo = videos_to_repair(path, bad)
    click.echo(f"{path}: {len(bad)} bad and {len(todo) - len(bad)} failed videos to redo")
    click.echo("extraction: " + ", ".join(f"{k}={v}" for k, v in {**features, **run}.items()))
    if dry_run or not todo:
        return
    reset, busy = reset_videos(path, todo)
    if busy:
        click.echo(f"{len(busy)} videos are being written by a live run, left to it: {', '.join(busy[:5])}")
    from glimpse.extract.api import FeatureRequest, RunOptions, extract_dataset  # the extraction stage's API

    summary = extract_dataset(FeatureRequest(**features), RunOptions(**run, progress=True))
    click.echo(summary.report(), err=bool(summary.failed))
    if summary.failed:
        sys.exit(1)
