"""Shared fixtures: a tiny synthetic dataset, a copy with bad files in it, and a real Dask cluster."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from extract.synth import SynthConfig, make_synthetic, write_video

#: Tiny but real: 3 classes x 4 clips of 10 frames at 64 x 64.
TINY = SynthConfig(classes=3, per_class=4, frames=10, size=64, seed=3)

def _moving_block(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.full((n, height, width, 3), 40, dtype=np.uint8)
    for t in range(n):
        frames[t, 10:22, 4 + 3 * t : 16 + 3 * t] = (230, 30, 30)
    return frames


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


#: Unusual but good videos added to a copy of the tiny dataset: file name -> writer. All must extract.
ODD_GOOD_FILES = {
    "v_Odd_g80_c01.mp4": lambda p: write_video(p, _moving_block(10), rotation=90),
    "v_Odd_g80_c02.mp4": lambda p: write_video(p, _moving_block(10), times=np.cumsum([0] + [0.04, 0.12] * 4 + [0.04])),
    "v_Odd_g80_c03.mkv": lambda p: write_video(p, _moving_block(10, 33, 47), codec="ffv1"),
    "v_Odd_g80_c04.webm": lambda p: write_video(p, _moving_block(10), codec="libvpx-vp9"),
}

#: Bad inputs added too: file name -> (writer, what the failure reason must say). None writes nothing.
BAD_FILES = {
    "v_Bad_g90_c01.avi": (lambda p: p.write_bytes(b""), "empty file"),
    "v_Bad_g90_c02.avi": (lambda p: p.write_text("not a video\n" * 50), "not a readable video"),
    "v_Bad_g90_c03.mp4": (lambda p: p.write_bytes(bytes(range(256)) * 40), "not a readable video"),
    "v_Bad_g90_c04.avi": (None, "file not found"),
    "v_Bad_g90_c05.mp4": (_audio_only, "no video stream"),
    "v_Bad_g90_c06.mp4": (lambda p: write_video(p, _moving_block(2)), "has 2 frames, 6 were asked"),
    "v_Bad_g90_c07.avi": (lambda p: p.mkdir(), "is a directory"),
    "v_Bad_g91_c01.avi": (None, "not a readable video"),  # the first 300 bytes of a good video, written below
}


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """The synthetic dataset at TINY's size (read-only for tests: copy it before changing it)."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "data", TINY)


@pytest.fixture(scope="session")
def tiny_with_bad_files(tiny_synthetic, tmp_path_factory) -> Path:
    """A copy of the tiny dataset whose train list also names ODD_GOOD_FILES and BAD_FILES."""
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(tiny_synthetic, root)
    videos = root / "UCF-101"
    first_class = (root / "ucfTrainTestlist" / "classInd.txt").read_text().split()[1]  # the class labelled 1
    lines = []
    writers = {**ODD_GOOD_FILES, **{name: make for name, (make, _reason) in BAD_FILES.items()}}
    good = next(iter(sorted((videos / first_class).glob("*.avi"))))
    for name, make in writers.items():
        path = videos / first_class / name.replace("Bad", first_class).replace("Odd", first_class)
        if name == "v_Bad_g91_c01.avi":
            path.write_bytes(good.read_bytes()[:300])
        elif make is not None:
            make(path)
        lines.append(f"{first_class}/{path.name} 1")
    trainlist = root / "ucfTrainTestlist" / "trainlist01.txt"
    trainlist.write_text(trainlist.read_text() + "\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster: two worker processes on loopback, one thread each."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def translating_video(tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    """A textured 96 x 96 video whose content moves 3 px right and 2 px up per frame."""
    import cv2

    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (160, 160, 3)).astype(np.float32), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    dx, dy = 3, -2
    # frame t shows the window at (row 30 - dy t, column 50 - dx t): content moves by (+dx, +dy) per frame
    frames = np.stack([texture[30 - dy * t : 126 - dy * t, 50 - dx * t : 146 - dx * t] for t in range(8)])
    return write_video(tmp_path_factory.mktemp("flow") / "translate.mp4", frames), (dx, dy)
