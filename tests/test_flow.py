"""Optical flow: known translations through real encoded videos, RAFT weights, flow image mapping."""

import hashlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

from glimpse.extract.flow import FLOW_METHODS, FlowEstimator, flow_to_image, image_to_flow
from glimpse.extract.weights import WeightsNotAvailable
from glimpse.media.encode import write_video

DX, DY = 3, -2  # content moves 3 px right and 2 px up per frame


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    """One torch / OpenCV thread: the test machine's 2 cores are shared."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


def translated_texture(height: int = 96, width: int = 96, count: int = 4) -> np.ndarray:
    """(count, H, W, 3) uint8 crops of a smooth random colour texture moving by (DX, DY) per frame."""
    rng = np.random.default_rng(0)
    pad = 20
    channels = [rng.normal(size=(height + 2 * pad, width + 2 * pad)).astype(np.float32) for _ in range(3)]
    texture = np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in channels], axis=-1)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 200 + 25
    crops = []
    for t in range(count):
        top, left = pad - t * DY, pad - t * DX  # the window moves against the content
        crops.append(texture[top : top + height, left : left + width])
    return np.stack(crops).round().astype(np.uint8)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module", params=[".mp4", ".avi"])
def decoded(request, tmp_path_factory) -> np.ndarray:
    """The translated texture written with the project's encoder and decoded back with PyAV."""
    frames = decode(write_video(tmp_path_factory.mktemp("flow") / f"moving{request.param}", translated_texture()))
    assert frames.shape == (4, 96, 96, 3)
    return frames


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_known_translation_is_recovered(method, decoded):
    flow = FlowEstimator(method)(decoded[:-1], decoded[1:])
    assert flow.shape == (3, 2, 96, 96) and flow.dtype == np.float32
    interior = flow[:, :, 12:-12, 12:-12]  # (3, 2, 72, 72)
    assert abs(np.median(interior[:, 0]) - DX) < 0.5
    assert abs(np.median(interior[:, 1]) - DY) < 0.5
    backward = FlowEstimator(method)(decoded[1:2], decoded[:1])[:, :, 12:-12, 12:-12]
    assert abs(np.median(backward[:, 0]) + DX) < 0.5 and abs(np.median(backward[:, 1]) + DY) < 0.5


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_resized_flow_is_in_pixels_of_the_computed_resolution(method, decoded):
    estimator = FlowEstimator(method, size=48)
    assert estimator.computed_at(96, 96) == (48, 48)
    flow = estimator(decoded[:-1], decoded[1:])
    assert flow.shape == (3, 2, 48, 48)
    interior = flow[:, :, 6:-6, 6:-6]
    assert abs(np.median(interior[:, 0]) - DX / 2) < 0.3
    assert abs(np.median(interior[:, 1]) - DY / 2) < 0.3


def test_computed_at_keeps_aspect_ratio():
    assert FlowEstimator("farneback").computed_at(240, 320) == (240, 320)
    assert FlowEstimator("farneback", size=128).computed_at(240, 320) == (128, 171)
    assert FlowEstimator("farneback", size=256).computed_at(320, 240) == (341, 256)


def test_random_raft_gives_finite_flow_at_any_size():
    frames = translated_texture(66, 90, count=3)  # neither side a multiple of 8
    estimator = FlowEstimator("raft", batch_size=1)
    assert estimator.weights_identity == "none"
    flow = estimator(frames[:-1], frames[1:])
    assert flow.shape == (2, 2, 66, 90) and flow.dtype == np.float32
    assert np.isfinite(flow).all() and np.abs(flow).max() > 0
    np.testing.assert_allclose(flow, FlowEstimator("raft", batch_size=2)(frames[:-1], frames[1:]), atol=1e-4)


def test_raft_state_dict_file_matches_torchvision(tmp_path):
    torch.manual_seed(5)
    reference = raft_small(weights=None).eval()
    path = tmp_path / "raft.pth"
    torch.save(reference.state_dict(), path)
    estimator = FlowEstimator("raft", weights=str(path))
    assert estimator.weights_identity == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()

    frames = translated_texture(128, 128, count=2)  # no padding needed at 128 x 128
    ours = estimator(frames[:1], frames[1:])
    images = [torch.from_numpy(f).permute(0, 3, 1, 2) for f in (frames[:1], frames[1:])]
    first, second = Raft_Small_Weights.DEFAULT.transforms()(*images)  # torchvision's own preprocessing
    with torch.no_grad():
        expected = reference(first, second)[-1]  # (1, 2, 128, 128)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-4, atol=1e-4)

    torch.save({k: v for k, v in reference.state_dict().items() if "update_block" not in k}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="cut.pth: .*missing keys: update_block"):
        FlowEstimator("raft", weights=str(tmp_path / "cut.pth"))


def test_raft_default_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    filename = Path(Raft_Small_Weights.DEFAULT.url).name
    with pytest.raises(WeightsNotAvailable, match=filename) as error:
        FlowEstimator("raft", weights="default")
    assert str(tmp_path / "hub" / "checkpoints") in str(error.value)
    assert not (tmp_path / "hub" / "checkpoints" / filename).exists()


def test_raft_default_weights_load_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(6)
    torch.save(raft_small(weights=None).state_dict(), checkpoints / Path(Raft_Small_Weights.DEFAULT.url).name)
    assert FlowEstimator("raft", weights="default").weights_identity == Raft_Small_Weights.DEFAULT.name


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown flow method 'brox'"):
        FlowEstimator("brox")
    with pytest.raises(ValueError, match="tvl1 has no weights"):
        FlowEstimator("tvl1", weights="some.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        FlowEstimator("raft", weights="nope.pth")
    estimator = FlowEstimator("farneback")
    frames = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="equal"):
        estimator(frames, frames[:1])
    with pytest.raises(ValueError, match="uint8"):
        estimator(frames.astype(np.float32), frames)
    assert set(FLOW_METHODS) == {"tvl1", "farneback", "raft"}


def test_flow_to_image_mapping():
    flow = np.zeros((1, 2, 1, 6), dtype=np.float32)
    flow[0, 0] = [0, 20, -20, 50, -50, 10]  # x
    flow[0, 1] = [0, 0, 0, 0, 0, -10]  # y
    image = flow_to_image(flow, bound=20)
    assert image.shape == (1, 1, 6, 3) and image.dtype == np.uint8
    assert image[0, 0, :, 0].tolist() == [128, 255, 0, 255, 0, 192]
    assert image[0, 0, :, 1].tolist() == [128, 128, 128, 128, 128, 64]
    assert image[0, 0, :, 2].tolist() == [0, 255, 255, 255, 255, round(np.hypot(10, 10) / 20 * 255)]

    rng = np.random.default_rng(1)
    smooth = rng.uniform(-19, 19, size=(2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(image_to_flow(flow_to_image(smooth, bound=20), bound=20), smooth, atol=20 / 256 + 1e-6)
    with pytest.raises(ValueError, match=r"\(N, 2, h, w\)"):
        flow_to_image(smooth[0])


def test_raft_batched_across_videos_equals_raft_pair_by_pair():
    one = translated_texture(64, 64, count=3)  # (3, 64, 64, 3): moves (DX, DY) per frame
    other = translated_texture(64, 64, count=3)[::-1].copy()  # another video: moves (-DX, -DY)
    estimator = FlowEstimator("raft", batch_size=2)
    first, second = (torch.from_numpy(np.stack(x)) for x in ((one[1], other[0]), (one[2], other[1])))
    batched = estimator.raft(first, second)  # (2, 2, 64, 64): a pair of each video in one batch
    alone = torch.cat([estimator.raft(first[i : i + 1], second[i : i + 1]) for i in range(2)])  # pair by pair
    torch.testing.assert_close(batched, alone, rtol=0, atol=0)
    # torchvision's RAFT-small with the same (seed 0) weights, one pair at a time, inputs padded to 128 by hand
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = raft_small(weights=None).eval()
    for i in range(2):
        a, b = (x[i : i + 1].permute(0, 3, 1, 2).float() / 127.5 - 1 for x in (first, second))  # (1, 3, 64, 64)
        a, b = (torch.nn.functional.pad(x, (0, 64, 0, 64), mode="replicate") for x in (a, b))  # (1, 3, 128, 128)
        with torch.no_grad():
            expected = reference(a, b, num_flow_updates=12)[-1][:, :, :64, :64]  # (1, 2, 64, 64)
        torch.testing.assert_close(batched[i : i + 1], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3), "the two videos' pairs must give different flow"
