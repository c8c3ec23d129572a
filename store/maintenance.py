"""Keeping a shared store healthy: removing what crashed writers left, re-queueing bad videos, upgrading its
schema, and copying it with another codec.

gc and repair work only on videos whose claim they can take (see store.claims), so they are safe to run
while extractions are going on: a video being written by a live run is left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glimpse.store.claims import claim_video, creation_lock
from glimpse.store.index import INDEX_STATUSES, IndexState, compact, video_bytes
from glimpse.store.layout import ROOT_ATTR, VIDEOS_GROUP, video_key
from glimpse.store.manifest import read_keys, write_manifest
from glimpse.store.reader import UPGRADABLE, StoreError, _open_root, open_store, read_meta_dict, read_result
from glimpse.store.schema import DONE, FAILED, PENDING, SCHEMA_VERSION, UNREADABLE
from glimpse.store.video_files import old_layout, temporary_files, upgrade_video_layout
from glimpse.store.writer import StoreWriter, create_copy

#: Suffix of zarr's temporary files (written, then renamed into place).
PARTIAL_SUFFIX = ".partial"


@dataclass
class Cleanup:
    """What ``store gc`` removed."""

    groups: list[str] = field(default_factory=list)  # videos whose half-written file was removed
    partial_files: int = 0  # zarr's temporary files in the store's own metadata
    busy: list[str] = field(default_factory=list)  # videos a live writer holds: left alone

    def report(self) -> str:
        lines = [f"removed {len(self.groups)} half-written videos and {self.partial_files} temporary files; "
                 f"{len(self.busy)} videos are being written by a live run and were left alone"]
        lines += [f"  reset {vid}" for vid in self.groups]
        return "\n".join(lines)


def collect_garbage(path: str | Path) -> Cleanup:
    """Remove leftovers of crashed writers: the temporary files of videos they were writing (store.video_files)
    and zarr's temporary files beside the store's metadata. Costs the same for any number of finished videos.

    Claim lock files are kept on purpose: deleting a lock file another process has open would
    let two processes hold "the same" claim on two different files.
    """
    path = Path(path)
    writer = StoreWriter(path)
    cleanup = Cleanup()
    for key, temporary in temporary_files(path):
        with claim_video(path, key, note="store gc") as held:
            if not held:
                cleanup.busy.append(key)
                continue
            temporary.unlink(missing_ok=True)
            cleanup.groups.append(key)
    for partial in list(path.glob(f"*{PARTIAL_SUFFIX}")) + list((path / VIDEOS_GROUP).glob(f"*{PARTIAL_SUFFIX}")):
        partial.unlink()
        cleanup.partial_files += 1
    writer.index.close()  # its log (the resets above) is closed, so compaction folds and removes it
    compact_index(path)
    ids = {row.key: row.id for row in open_store(path).manifest} if cleanup.groups or cleanup.busy else {}
    cleanup.groups = [ids[k] for k in cleanup.groups]
    cleanup.busy = [ids[k] for k in cleanup.busy]
    return cleanup


def _settle(path: Path, key: str) -> tuple[str, int, str | None, str | None]:
    """(status, n_frames, error, device) of video ``key`` as its attributes say; a broken one counts as failed."""
    try:
        result = read_result(path, key)
    except Exception as exc:
        return FAILED, 0, f"video metadata unreadable ({type(exc).__name__}: {exc})", None
    if result is None:
        return PENDING, 0, None, None
    status = result.status if result.status in INDEX_STATUSES else FAILED
    return status, result.n_frames, result.error, result.device


def compact_index(path: str | Path) -> IndexState:
    """Fold the index logs of the local store at ``path`` into its snapshot (videos logged "writing" settled from
    their attributes); the logs of writers that are gone are removed. Safe while writers run."""
    path = Path(path)
    return compact(path, read_keys(_open_root(path, "r")), result_status=lambda key: _settle(path, key))


def reindex_store(path: str | Path) -> IndexState:
    """Rebuild the index of the local store at ``path`` from every video's attributes (the source of truth);
    safe while writers run: what they log during the scan is applied on top."""
    path = Path(path)
    keys = read_keys(_open_root(path, "r", any_version=True))  # any version: upgrade_store builds the index first

    def scan() -> IndexState:
        state = IndexState.empty(len(keys))
        for at, key in enumerate(keys):
            status, n_frames, error, device = _settle(path, key)
            state.set(at, status, n_frames, video_bytes(path, key), error, device)
        return state

    return compact(path, keys, rebuild_from=scan)


def reset_videos(path: str | Path, video_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Put videos back to pending (their data removed) so the next extraction redoes them.

    Returns (reset, busy): videos a live writer holds are not touched.
    """
    writer = StoreWriter(path)
    reset, busy = [], []
    for video_id in video_ids:
        key = video_key(video_id)
        with claim_video(path, key, note="store repair") as held:
            if not held:
                busy.append(video_id)
                continue
            writer.reset(key)
            reset.append(video_id)
    return reset, busy


def extraction_options(path: str | Path, root: str | None = None,
                       weights: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields of the extraction stage's API values (``glimpse.extract.api.FeatureRequest`` and ``RunOptions``)
    that (re)fill the store at ``path`` with its own config: what ``store repair`` runs.

    The dataset root and the weights file come from what the store recorded at creation, unless given here (a
    store moved to another machine, or one imported from HDF5).
    """
    store = open_store(path)
    config, source = store.config, dict(store.metadata.source)
    root = root or source.get("root")
    weights = weights or source.get("weights") or config.get("weights")
    if not root:
        raise StoreError(f"{path}: the store does not record its dataset root; pass --root")
    if not weights or weights.startswith("sha256:"):
        raise StoreError(f"{path}: the store does not record which weights file it used; pass --weights PATH")
    features: dict[str, Any] = {"dataset": store.dataset, "root": root, "backbone": config["backbone"],
                                "weights": weights, "size": config["size"], "flow": config.get("flow", "none")}
    kept = ("frames", "fps", "max_frames", "flow_size", "layer", "clip_frames", "clip_stride")
    features.update({k: config[k] for k in kept if config.get(k) is not None})
    if config.get("streams") is not None:
        features["streams"] = tuple(config["streams"])
    features.update({k: source[k] for k in ("flow_weights", "raft_weights", "seed") if source.get(k) is not None})
    run: dict[str, Any] = {"out": str(path)}
    if source.get("batch_size") is not None:
        run["batch_size"] = source["batch_size"]
    return features, run


def videos_to_repair(path: str | Path, bad: Iterable[tuple[str, str]]) -> list[str]:
    """Ids of the videos verify found bad plus every failed one, in manifest order."""
    wanted = {vid for vid, _reason in bad}
    return [v.id for v in open_store(path).videos if v.id in wanted or v.status == FAILED]



def upgrade_store(path: str | Path) -> int:
    """Bring the store at ``path`` to the current schema version in place; returns the version it had.

    Version 1 to 2 adds ``multi_label`` to the root metadata: whether any video of the manifest has several
    labels (what version 1 readers guessed each time). A store keeping its videos one folder per video gets one
    file per video first (:func:`store.video_files.upgrade_video_layout`: values and checksums kept). Version 2 to 3
    moves the manifest from the root attributes to the ``manifest/`` group and builds the index from every video's
    attributes. The root attributes change last, so an interrupted upgrade is run again.
    """
    root = _open_root(path, "r+", any_version=True)
    if old_layout(path):
        upgrade_video_layout(path)
    meta = dict(root.attrs[ROOT_ATTR])
    version = meta.get("schema_version")
    if version == SCHEMA_VERSION:
        return version
    if version not in UPGRADABLE:
        raise StoreError(f"{path}: store schema version {version}; this glimpse upgrades versions {UPGRADABLE} "
                         f"to {SCHEMA_VERSION}, re-extract it instead")
    if version == 1:
        meta["multi_label"] = any(len(row["labels"]) > 1 for row in meta["videos"])
    meta["schema_version"] = SCHEMA_VERSION
    upgraded = read_meta_dict(meta, str(path))
    with creation_lock(path):
        write_manifest(root, upgraded.videos)
        reindex_store(path)
        root.attrs[ROOT_ATTR] = upgraded.head_dict()
    return version


def recode_store(path: str | Path, out: str | Path, codec: str, progress: bool = False) -> dict[str, int]:
    """Copy the store at ``path`` to a new store at ``out`` whose chunks are stored with ``codec``; returns
    {"done": videos copied, "failed": failures copied, "pending": videos left pending}.

    The values, checksums, metadata and config hash stay the same (a codec is a storage choice): extract once
    with zstd to share, and keep a ``none`` copy on the disk a GPU machine trains from. Every copied video's
    checksums are compared with the source's; ``out`` may hold an interrupted copy of the same store, which is
    finished. A tqdm bar when ``progress`` and stderr is a terminal.
    """
    source = open_store(path)
    writer = create_copy(out, replace(source.metadata, codec=codec))
    from tqdm import tqdm

    counts = {DONE: 0, FAILED: 0, "pending": 0}
    bar = tqdm(total=len(source.manifest), unit="video", desc=f"recode to {codec}", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    for entry in source.videos:
        if entry.status in (DONE, FAILED) and writer.status(entry.key) == entry.status:
            counts[entry.status] += 1  # copied by an earlier, interrupted recode
        elif entry.status == DONE:
            arrays = {name: source.stream(entry.id, name).read() for name in source.streams}  # chunks read directly
            written = writer.write_video(entry.key, arrays, entry.result)
            if written.checksums != entry.checksums:
                raise StoreError(f"{out}: video {entry.id} copied with other checksums than {path} records "
                                  f"(run 'python -m glimpse.store verify {path}')")
            counts[DONE] += 1
        elif entry.status in (FAILED, UNREADABLE):
            writer.write_failure(entry.key, entry.error or entry.status, entry.result)
            counts[FAILED] += 1
        else:
            counts["pending"] += 1
        bar.update(1)
    bar.close()
    return counts
