"""Backbones: registry shapes, weights loading (file, offline cache, random), float16 range, preprocessing."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from glimpse.extract.backbones import (
    BACKBONES,
    FeatureExtractor,
    WeightsNotAvailable,
    build_backbone,
    output_grid,
    weights_identity,
)
from glimpse.media.encode import write_video

#: small input sides that keep CPU tests fast (Inception v3 needs >= 75 px; 112 gives a 2x2 grid)
SMALL = {name: 112 if name == "inception_v3" else 64 for name in BACKBONES}

#: the paper's layer as a torchvision submodule path, written out independently of the registry
PAPER_LAYER = {
    "googlenet": "inception5b",
    "inception_v3": "Mixed_7c",
    "vgg16": "features.29",  # ReLU after conv5_3 = features.28, the 13th conv
    "vgg16_pool5": "features.30",  # the 5th max pool
    "resnet152": "layer4",
}


def torchvision_model(arch: str) -> torch.nn.Module:
    """The torchvision model as torchvision builds it for its ImageNet weights, with random values."""
    with_heads = {"aux_logits": True, "transform_input": True, "init_weights": False}
    kwargs = with_heads if arch in ("googlenet", "inception_v3") else {}
    torch.manual_seed(1)
    model = torchvision.models.get_model(arch, weights=None, **kwargs).eval()
    generator = torch.Generator().manual_seed(2)
    for module in model.modules():  # non-trivial running statistics, so a missed load shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread per test: on a shared 2-core machine OpenMP spin-waiting makes small convs ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> np.ndarray:
    """Six decoded frames (6, 72, 96, 3) of a real H.264 video of a moving coloured square."""
    import av

    rng = np.random.default_rng(0)
    video = np.repeat(rng.integers(40, 90, (1, 72, 96, 3), dtype=np.uint8), 6, axis=0)
    for t in range(6):
        video[t, 20:44, 10 + 8 * t : 34 + 8 * t] = (220, 60, 30)
    path = write_video(tmp_path_factory.mktemp("video") / "clip.mp4", video)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (6, 72, 96, 3)
    return decoded


@pytest.fixture(scope="module")
def googlenet() -> FeatureExtractor:
    """Random GoogLeNet at 64 px, calibrated on the seeded synthetic images."""
    return build_backbone("googlenet", "none", size=64)


@pytest.mark.parametrize("name", BACKBONES)
def test_registry_grid_matches_dry_run(name):
    spec = BACKBONES[name]
    assert spec.name == name
    assert output_grid(name, spec.size) == spec.grid


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="inception_v3.*64 px is too small"):
        output_grid("inception_v3", 64)
    with pytest.raises(KeyError, match="unknown backbone 'alexnet'"):
        build_backbone("alexnet", "none")


@pytest.mark.parametrize("name", BACKBONES)
def test_random_weights_give_float16_safe_features(name, frames):
    """'none' features must survive the store's float16: finite, not all zero, mostly normal numbers."""
    extractor = build_backbone(name, "none", size=SMALL[name], calibration_frames=frames[:4])
    features = extractor.features(frames, batch_size=4)
    k = output_grid(name, SMALL[name])
    assert features.shape == (6, BACKBONES[name].channels, k, k) and features.dtype == np.float32
    half = features.astype(np.float16)
    assert np.isfinite(half).all()
    assert np.abs(half).max() > 0.1
    normal = np.abs(half) >= np.finfo(np.float16).smallest_normal
    assert normal.mean() > 0.25, f"only {normal.mean():.2%} of {name} features are float16 normal numbers"
    # the float16 copy keeps the values, not just their sign
    np.testing.assert_allclose(half.astype(np.float32), features, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", BACKBONES)
def test_state_dict_file_matches_torchvision_forward_hook(name, frames, tmp_path):
    """weights=PATH gives exactly the torchvision model's activation at the paper's layer."""
    arch = BACKBONES[name].arch
    reference = torchvision_model(arch)
    state = reference.state_dict()
    if arch == "vgg16":  # heads are irrelevant and may be missing from the file
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)

    extractor = build_backbone(name, str(path), size=SMALL[name])
    assert extractor.weights_identity == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    images = extractor.preprocess(frames[:3])  # (3, 3, S, S)

    captured = []
    reference.get_submodule(PAPER_LAYER[name]).register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    with torch.no_grad():
        reference(images)
    ours = extractor(images)
    assert ours.shape == captured[0].shape
    torch.testing.assert_close(ours, captured[0], rtol=1e-5, atol=1e-5)
    if name.startswith("vgg16"):
        assert isinstance(reference.features[28], torch.nn.Conv2d)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in reference.features[:29]) == 13


def test_bad_state_dict_files_name_the_file_and_keys(tmp_path):
    state = torchvision_model("googlenet").state_dict()
    cases = {
        "missing.pth": ({k: v for k, v in state.items() if k != "inception4a.branch1.conv.weight"}, "missing keys"),
        "extra.pth": ({**state, "module.bogus": torch.zeros(1)}, "unexpected keys: module.bogus"),
        "shape.pth": ({**state, "conv1.conv.weight": torch.zeros(8, 3, 7, 7)}, r"shape mismatch: conv1.conv.weight"),
    }
    for filename, (bad, message) in cases.items():
        torch.save(bad, tmp_path / filename)
        with pytest.raises(ValueError, match=message) as error:
            build_backbone("googlenet", str(tmp_path / filename), size=64)
        assert filename in str(error.value)
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "checkpoint.pth")
    with pytest.raises(ValueError, match="checkpoint.pth: not a plain state_dict"):
        build_backbone("googlenet", str(tmp_path / "checkpoint.pth"), size=64)
    (tmp_path / "text.pth").write_text("not torch")
    with pytest.raises(ValueError, match="text.pth: cannot be read"):
        build_backbone("googlenet", str(tmp_path / "text.pth"), size=64)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("googlenet", str(tmp_path / "nope.pth"), size=64)


@pytest.mark.parametrize("name", BACKBONES)
def test_imagenet_weights_not_cached_raise_without_download(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights(BACKBONES[name].arch).DEFAULT
    filename = Path(weights.url).name
    with pytest.raises(WeightsNotAvailable) as error:
        build_backbone(name, "imagenet", size=SMALL[name])
    message = str(error.value)
    assert filename in message and weights.url in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert not (tmp_path / "hub" / "checkpoints" / filename).exists()


def test_imagenet_weights_load_from_the_hub_cache(frames, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.GoogLeNet_Weights.DEFAULT
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    cached = checkpoints / Path(weights.url).name  # random values: the hash prefix is not checked
    state = torchvision_model("googlenet").state_dict()
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, cached)  # as old checkpoints
    os.link(cached, tmp_path / "same.pth")

    extractor = build_backbone("googlenet", "imagenet", size=64)
    assert extractor.weights_identity == "IMAGENET1K_V1" == weights_identity("imagenet", "googlenet")
    from_file = build_backbone("googlenet", str(tmp_path / "same.pth"), size=64)
    np.testing.assert_array_equal(extractor.features(frames), from_file.features(frames))


def test_weights_identity():
    assert weights_identity("none") == weights_identity("none", "vgg16") == "none"
    assert weights_identity("imagenet", "resnet152") == "IMAGENET1K_V2"
    assert weights_identity("IMAGENET1K_V1", "resnet152") == "IMAGENET1K_V1"
    with pytest.raises(ValueError, match="needs the backbone name"):
        weights_identity("imagenet")


def test_file_weights_identity_is_its_sha256(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x00" * 1000 + b"glimpse")
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_identity(str(path)) == weights_identity(str(path), "googlenet") == expected


def test_random_weights_are_deterministic_and_identified_by_calibration(frames, googlenet):
    torch.manual_seed(123)
    expected_random = torch.rand(3)
    torch.manual_seed(123)
    first = build_backbone("googlenet", "none", size=64, calibration_frames=frames[:2])
    torch.testing.assert_close(torch.rand(3), expected_random)  # the caller's RNG is untouched
    second = build_backbone("googlenet", "none", size=64, calibration_frames=frames[:2])
    np.testing.assert_array_equal(first.features(frames), second.features(frames))
    np.testing.assert_array_equal(first.features(frames), first.features(frames))
    assert first.weights_identity == second.weights_identity
    assert first.weights_identity.startswith("none+calib:")

    assert googlenet.weights_identity == "none"  # calibrated on the synthetic images
    assert not np.array_equal(googlenet.features(frames), first.features(frames))
    assert np.abs(googlenet.features(frames)).max() > 0.1


def test_preprocess_resizes_and_normalizes_like_torchvision(frames, googlenet):
    extractor = googlenet
    images = extractor.preprocess(frames)
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32

    chw = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
    resized = TF.resize(TF.to_dtype(chw, torch.float32, scale=True), [64, 64], antialias=True)
    expected = TF.normalize(resized, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(extractor.preprocess(torch.from_numpy(frames)), images)

    white = np.full((1, 64, 64, 3), 255, dtype=np.uint8)
    expected_white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(extractor.preprocess(white)[0, :, 5, 5], expected_white)

    with pytest.raises(ValueError, match=r"googlenet: frames must be \(T, H, W, 3\) uint8"):
        extractor.preprocess(frames.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        extractor.preprocess(frames[0])


def test_features_batches_and_empty_input(frames, googlenet):
    extractor = googlenet
    whole = extractor.features(frames, batch_size=6)
    batched = extractor.features(frames, batch_size=4)
    assert batched.shape == whole.shape == (6, 1024, 2, 2)
    np.testing.assert_allclose(batched, whole, rtol=1e-4, atol=1e-4)
    assert extractor.features(frames[:0]).shape == (0, 1024, 2, 2)
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
