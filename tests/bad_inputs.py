"""The bad-input corpus: odd but valid videos, and files that must fail with their reason.

:func:`add_corpus` writes every case into one class folder of a UCF-101-style tree (the synthetic
layout) and lists it in the train split, so any extraction over that tree meets all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from glimpse.media.encode import write_video

DONE, FAILED, EITHER = "done", "failed", "either"


def moving_block(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(n, height, width, 3) frames of a red block moving right over grey."""
    frames = np.full((n, height, width, 3), 40, dtype=np.uint8)
    side = max(2, min(height, width) // 4)
    for t in range(n):
        x = min(width - side, 2 + 2 * t)
        frames[t, height // 4 : height // 4 + side, x : x + side] = (230, 30, 30)
    return frames


def audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def truncated(fraction: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        data = write_video(path, moving_block(10)).read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return make


def corrupted_middle(path: Path) -> None:
    """A video whose middle packet's bytes are overwritten with noise."""
    write_video(path, moving_block(10))
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size > 0 and p.pos is not None]
    pos, size = packets[len(packets) // 2]
    data = bytearray(path.read_bytes())
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def symlink_loop(path: Path) -> None:
    partner = path.with_name(path.stem + "-partner.avi")
    os.symlink(partner.name, path)
    os.symlink(path.name, partner)


def unreadable(path: Path) -> None:
    write_video(path, moving_block(10))
    path.chmod(0)


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``name`` (``{cls}`` is the class), how to make it, what extraction must do with it."""

    name: str
    make: Callable[[Path], None] | None  # None: listed but absent
    expect: str  # DONE, FAILED or EITHER (damage that may still decode)
    reason: str = ""  # what a failure's reason must say

    def file_name(self, cls: str) -> str:
        return self.name.format(cls=cls)


#: Every case, for extraction with ``frames=6`` (the tests' TINY_OPTS).
CASES = (
    Case("v_{cls}_g80_c01.mp4", lambda p: write_video(p, moving_block(10), rotation=90), DONE),
    Case("v_{cls}_g80_c02.mp4", lambda p: write_video(p, moving_block(10), times=np.cumsum([0] + [0.04, 0.12] * 4
                                                                                             + [0.04])), DONE),
    Case("v_{cls}_g80_c03.mkv", lambda p: write_video(p, moving_block(10, 33, 47), codec="ffv1"), DONE),
    Case("v_{cls}_g80_c04.webm", lambda p: write_video(p, moving_block(10), codec="libvpx-vp9"), DONE),
    Case("v_{cls}_g80_c05.mp4", lambda p: write_video(p, moving_block(10, 8, 8)), DONE),  # 8 x 8
    Case("v_{cls}_g80_c06.mp4", lambda p: write_video(p, moving_block(10, 16, 512)), DONE),  # very wide
    Case("v_{cls}_g80_c07 mit Leerzeichen ü é 漢字.mp4", lambda p: write_video(p, moving_block(10)), DONE),
    Case("v_{cls}_g81_c01.avi", truncated(0.9), EITHER),
    Case("v_{cls}_g81_c02.avi", truncated(0.5), EITHER),
    Case("v_{cls}_g81_c03.mp4", corrupted_middle, EITHER),
    Case("v_{cls}_g90_c01.avi", lambda p: p.write_bytes(b""), FAILED, "empty file"),
    Case("v_{cls}_g90_c02.avi", lambda p: p.write_text("not a video\n" * 50), FAILED, "not a readable video"),
    Case("v_{cls}_g90_c03.mp4", lambda p: p.write_bytes(bytes(range(256)) * 40), FAILED, "not a readable video"),
    Case("v_{cls}_g90_c04.avi", None, FAILED, "file not found"),
    Case("v_{cls}_g90_c05.mp4", audio_only, FAILED, "no video stream"),
    Case("v_{cls}_g90_c06.mp4", lambda p: write_video(p, moving_block(2)), FAILED, "has 2 frames, 6 were asked"),
    Case("v_{cls}_g90_c07.mp4", lambda p: write_video(p, moving_block(1)), FAILED, "has 1 frames, 6 were asked"),
    Case("v_{cls}_g90_c08.avi", lambda p: p.mkdir(), FAILED, "is a directory"),
    Case("v_{cls}_g90_c09.avi", truncated(0.02), FAILED, "not a readable video"),
    Case("v_{cls}_g90_c10.avi", symlink_loop, FAILED, "looping symbolic link"),
    # root reads a chmod-0 file anyway: the permission case is definite only for other users (see test_reliability)
    Case("v_{cls}_g90_c11.mp4", unreadable, FAILED if os.geteuid() else DONE, "permission denied"),
)


def _corpus_class(root: Path) -> str:
    return (root / "ucfTrainTestlist" / "classInd.txt").read_text().split()[1]  # the class labelled 1


def corpus_ids(root: Path, cases: tuple[Case, ...] = CASES) -> dict[str, Case]:
    """Video id -> case, for the corpus :func:`add_corpus` writes under ``root``."""
    cls = _corpus_class(root)
    return {f"{cls}/{Path(case.file_name(cls)).stem}": case for case in cases}


def add_corpus(root: Path, cases: tuple[Case, ...] = CASES) -> dict[str, Case]:
    """Write ``cases`` into the class labelled 1 of the UCF-style tree at ``root``; returns video id -> case."""
    cls = _corpus_class(root)
    folder = root / "UCF-101" / cls
    lines = []
    for case in cases:
        path = folder / case.file_name(cls)
        if case.make is not None:
            case.make(path)
        lines.append(f"{cls}/{path.name} 1")
    trainlist = root / "ucfTrainTestlist" / "trainlist01.txt"
    trainlist.write_text(trainlist.read_text() + "\n".join(lines) + "\n")
    return corpus_ids(root, cases)


def check_outcomes(videos: list, by_id: dict[str, Case]) -> dict[str, int]:
    """Assert every corpus video ended as its case says; returns counts by outcome."""
    counts = {DONE: 0, FAILED: 0}
    for video in videos:
        case = by_id.get(video.id)
        counts[video.status] = counts.get(video.status, 0) + 1
        if case is None:
            assert video.status == DONE, f"{video.id}: a good synthetic video ended {video.status}: {video.error}"
            continue
        if case.expect == DONE:
            assert video.status == DONE, f"{video.id} must extract, failed: {video.error}"
        elif case.expect == FAILED:
            assert video.status == FAILED, f"{video.id} must fail ({case.reason}), ended {video.status}"
        if video.status == FAILED:
            assert case.reason in video.error, f"{video.id}: reason {video.error!r} lacks {case.reason!r}"
            assert Path(video.path).name in video.error, f"{video.id}: the reason must name the file"
    return counts
