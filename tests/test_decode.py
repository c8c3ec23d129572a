"""Decoding and frame sampling on real encoded videos, and clear errors on bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from extract.decode import DecodeError, Sampling, _plan_segments, decode_video, scan
from extract.synth import write_video

N_FRAMES = 48


def numbered_frames(n: int = N_FRAMES, size: int = 64) -> np.ndarray:
    """Frames whose top row of 8 black/white 8x8 blocks spells the frame number in binary."""
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (1, size, size, 3), dtype=np.uint8), n, axis=0)
    for number in range(n):
        for bit in range(8):
            frames[number, :8, bit * 8 : bit * 8 + 8] = 255 if number >> bit & 1 else 0
    return frames


def frame_numbers(frames: np.ndarray) -> list[int]:
    blocks = frames[:, 2:6, :64].reshape(len(frames), 4, 8, 8, 3).mean(axis=(1, 3, 4))  # (T, 8)
    return ((blocks > 128) * (1 << np.arange(8))).sum(axis=1).tolist()


@pytest.fixture(scope="module", params=[".mp4", ".avi"])
def video(request, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("dec") / f"numbered{request.param}", numbered_frames())


def test_scan_counts_frames_and_times(video):
    info = scan(video)
    assert info.n_frames == N_FRAMES
    assert info.times[0] == 0 and np.allclose(np.diff(info.times), 1 / 25)
    assert info.keyframes[0]


@pytest.mark.parametrize(
    "sampling, expected",
    [
        (Sampling(frames=5), [0, 12, 24, 35, 47]),
        (Sampling(fps=5), [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]),
        (Sampling(frames=5, max_frames=2), [0, 12]),
        (Sampling(max_frames=3), [0, 1, 2]),
    ],
)
def test_sampling_decodes_exactly_the_selected_frames(video, sampling, expected):
    decoded = decode_video(video, sampling)
    assert decoded.indices.tolist() == expected
    assert frame_numbers(decoded.frames) == expected
    assert np.allclose(decoded.timestamps, np.array(expected) / 25)


def test_flow_pairs_are_each_frame_and_the_next(video):
    decoded = decode_video(video, Sampling(frames=4), with_next=True)
    assert decoded.flow_pairs.tolist() == [[0, 1], [16, 17], [31, 32], [46, 47]]  # last frame pairs backwards
    assert frame_numbers(decoded.flow_from) == [0, 16, 31, 46]
    assert frame_numbers(decoded.flow_to) == [1, 17, 32, 47]


def test_seeking_gives_the_same_frames_as_a_sequential_pass(tmp_path):
    path = tmp_path / "gop.avi"  # MPEG-4 with frequent keyframes: seeking pays off
    write_video(path, numbered_frames(120))
    info = scan(path)
    needed = np.array([5, 60, 100])
    short_gops = info.keyframes.copy()
    short_gops[::10] = True
    assert _plan_segments(needed, short_gops) is not None
    assert _plan_segments(needed, np.eye(1, 120, dtype=bool)[0]) is None  # one keyframe: sequential
    decoded = decode_video(path, Sampling(frames=7))
    assert frame_numbers(decoded.frames) == decoded.indices.tolist()


def write_audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not a video\n" * 20), "not a readable video"),
        (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "not a readable video"),
        (write_audio_only, "no video stream"),
    ],
    ids=["missing", "zero-bytes", "text", "random-bytes", "audio-only"],
)
def test_bad_files_fail_with_the_file_and_the_reason(tmp_path, make, reason):
    path = tmp_path / "bad video.avi"
    make(path)
    with pytest.raises(DecodeError) as err:
        decode_video(path, Sampling(frames=4))
    assert str(path) in str(err.value) and reason in str(err.value)


def test_too_short_and_truncated_videos_fail_clearly(tmp_path):
    short = write_video(tmp_path / "short.mp4", numbered_frames(6))
    with pytest.raises(DecodeError, match="has 6 frames, 30 were asked"):
        decode_video(short, Sampling(frames=30))
    one = write_video(tmp_path / "one.mp4", numbered_frames(1))
    with pytest.raises(DecodeError, match="flow needs 2 frames"):
        decode_video(one, Sampling(), with_next=True)
    full = write_video(tmp_path / "full.avi", numbered_frames(48)).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full[: len(full) // 2])
    decoded = decode_video(cut, Sampling())  # what the packets index holds decodes; the rest is absent
    assert 0 < len(decoded.indices) < 48
    assert frame_numbers(decoded.frames) == decoded.indices.tolist()


def test_exclusive_sampling_options():
    with pytest.raises(ValueError, match="not both"):
        Sampling(frames=3, fps=2)
    with pytest.raises(ValueError, match="positive"):
        Sampling(frames=0)
