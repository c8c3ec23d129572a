"""Decoding and frame sampling on real encoded videos, and clear errors on bad files."""

from __future__ import annotations

import shutil
import subprocess

import av
import numpy as np
import pytest

from glimpse.media.decode import DecodeError, Sampling, _plan_segments, decode_video, scan
from glimpse.media.encode import write_video

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


def corner_marked(height: int = 48, width: int = 64, n: int = 4) -> np.ndarray:
    """Landscape frames with a white block in the top-left corner."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    frames[:, :8, :16] = 255
    return frames


@pytest.mark.parametrize(
    "rotation, shape, rows, cols",
    [(90, (64, 48), (48, 63), (0, 7)), (-90, (64, 48), (0, 15), (40, 47)), (180, (48, 64), (40, 47), (48, 63))],
)
def test_display_rotation_is_applied_as_players_show_it(tmp_path, rotation, shape, rows, cols):
    path = write_video(tmp_path / "rotated.mp4", corner_marked(), rotation=rotation)
    decoded = decode_video(path, Sampling(frames=2))
    image = decoded.frames[0]
    assert image.shape[:2] == shape and decoded.rotation % 360 == rotation % 360
    ys, xs = np.nonzero(image[..., 0] > 128)
    assert (ys.min(), ys.max()) == rows and (xs.min(), xs.max()) == cols  # a CCW turn moves top-left to bottom-left
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:  # and it is exactly what ffmpeg's autorotate shows
        raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                              "rgb24", "-"], capture_output=True, check=True).stdout
        reference = np.frombuffer(raw, np.uint8).reshape(image.shape)
        assert np.abs(reference.astype(int) - image).mean() < 3


@pytest.mark.parametrize("name, codec", [("odd.mkv", "ffv1"), ("odd.mp4", "libx264"), ("vp9.webm", "libvpx-vp9"),
                                         ("mpeg2.mpg", "mpeg2video"), ("mjpeg.mov", "mjpeg")])
def test_other_codecs_containers_and_odd_sizes(tmp_path, name, codec):
    size = (33, 47) if name.startswith("odd") else (48, 64)
    frames = np.ascontiguousarray(numbered_frames(12, 64)[:, : size[0], : size[1]])
    decoded = decode_video(write_video(tmp_path / name, frames, codec=codec), Sampling(frames=4))
    assert decoded.frames.shape == (4, *size, 3)
    assert decoded.indices.tolist() == [0, 4, 7, 11]
    if size[1] >= 64:
        assert frame_numbers(decoded.frames) == [0, 4, 7, 11]


def test_variable_frame_rate_is_resampled_by_time(tmp_path):
    times = [0.0, 0.04, 0.08, 0.2, 0.24, 0.4, 0.44]
    path = write_video(tmp_path / "vfr.mp4", numbered_frames(7), times=times)
    decoded = decode_video(path, Sampling(fps=10))
    # at 0.0, 0.1, 0.2, 0.3, 0.4 s the frames on screen are 0, 2, 3, 4, 5
    assert decoded.indices.tolist() == [0, 2, 3, 4, 5]
    assert frame_numbers(decoded.frames) == [0, 2, 3, 4, 5]
    assert np.allclose(decoded.timestamps, [0.0, 0.08, 0.2, 0.24, 0.4])
