"""Keeping a shared store healthy: removing what crashed writers left, and re-queueing bad videos.

Both work only on videos whose claim they can take (see store.claims), so they are safe to run
while extractions are going on: a video being written by a live run is left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from glimpse.store.claims import claim_video
from glimpse.store.layout import VIDEOS_GROUP, video_key
from glimpse.store.reader import StoreError, open_store
from glimpse.store.schema import DONE, FAILED
from glimpse.store.writer import StoreWriter

#: Suffix of zarr's temporary files (written, then renamed into place).
PARTIAL_SUFFIX = ".partial"


@dataclass
class Cleanup:
    """What ``store gc`` removed."""

    groups: list[str] = field(default_factory=list)  # videos whose half-written data was removed
    partial_files: int = 0
    busy: list[str] = field(default_factory=list)  # videos a live writer holds: left alone

    def report(self) -> str:
        lines = [f"removed {len(self.groups)} half-written videos and {self.partial_files} temporary files; "
                 f"{len(self.busy)} videos are being written by a live run and were left alone"]
        lines += [f"  reset {vid}" for vid in self.groups]
        return "\n".join(lines)


def collect_garbage(path: str | Path) -> Cleanup:
    """Remove leftovers of crashed writers: videos left "writing" and zarr's temporary files.

    Claim lock files are kept on purpose: deleting a lock file another process has open would
    let two processes hold "the same" claim on two different files.
    """
    path = Path(path)
    writer = StoreWriter(path)
    cleanup = Cleanup()
    for row in writer.meta["videos"]:
        key = row["key"]
        folder = path / VIDEOS_GROUP / key
        if not folder.exists():
            continue
        with claim_video(path, key, note="store gc") as held:
            if not held:
                cleanup.busy.append(row["id"])
                continue
            for partial in folder.rglob(f"*{PARTIAL_SUFFIX}"):
                partial.unlink()
                cleanup.partial_files += 1
            if writer.status(key) not in (DONE, FAILED):
                writer.reset(key)
                cleanup.groups.append(row["id"])
    for partial in list(path.glob(f"*{PARTIAL_SUFFIX}")) + list((path / VIDEOS_GROUP).glob(f"*{PARTIAL_SUFFIX}")):
        partial.unlink()
        cleanup.partial_files += 1
    return cleanup


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


def extraction_command(path: str | Path, root: str | None = None, weights: str | None = None) -> list[str]:
    """The ``python -m glimpse.extract`` command that (re)fills the store at ``path`` with its own config.

    The dataset root and the weights file come from what the store recorded at creation, unless
    given here (a store moved to another machine, or one imported from HDF5).
    """
    store = open_store(path)
    config, source = store.config, dict(store.meta.get("source", {}))
    root = root or source.get("root")
    weights = weights or source.get("weights") or config.get("weights")
    if not root:
        raise StoreError(f"{path}: the store does not record its dataset root; pass --root")
    if not weights or weights.startswith("sha256:"):
        raise StoreError(f"{path}: the store does not record which weights file it used; pass --weights PATH")
    command = [sys.executable, "-m", "glimpse.extract", "--dataset", store.dataset, "--root", root, "--out", str(path),
               "--backbone", config["backbone"], "--weights", weights, "--size", str(config["size"]),
               "--flow", config.get("flow", "none")]
    for option in ("frames", "fps", "max_frames", "flow_size"):
        if config.get(option) is not None:
            command += [f"--{option.replace('_', '-')}", str(config[option])]
    for option in ("flow_weights", "raft_weights", "seed", "batch_size"):
        if source.get(option) is not None:
            command += [f"--{option.replace('_', '-')}", str(source[option])]
    return command


def videos_to_repair(path: str | Path, bad: Iterable[tuple[str, str]]) -> list[str]:
    """Ids of the videos verify found bad plus every failed one, in manifest order."""
    wanted = {vid for vid, _reason in bad}
    return [v.id for v in open_store(path).videos if v.id in wanted or v.status == FAILED]

