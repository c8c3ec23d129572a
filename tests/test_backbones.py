"""Backbones: registry shapes, torchvision:NAME at any node, weights loading (file, offline cache, random), float16
range, preprocessing, and every backbone through a real extraction into a store that softattn trains on."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from extraction import extract, stores_per_backbone
from torchvision.transforms.v2 import functional as TF

from glimpse.extract.backbones import (
    BACKBONES,
    BackboneError,
    FeatureExtractor,
    backbone_spec,
    build_backbone,
    output_grid,
    weights_identity,
)
from glimpse.extract.random_weights import RandomWeightsError
from glimpse.extract.video_backbones import is_video_backbone
from glimpse.extract.weights import WeightsNotAvailable
from glimpse.media.decode import Sampling, decode_video
from glimpse.media.encode import write_video
from glimpse.store import open_store
from glimpse.store.maintenance import extraction_options
from glimpse.train.loop import train_model

#: the 2D networks of the registry (tests/test_video_backbones.py has the video ones)
IMAGE_BACKBONES = [name for name in BACKBONES if not is_video_backbone(name)]
#: the smallest input sides that give a 2 x 2 grid, to keep CPU tests fast (Inception v3 needs >= 75 px; ViT-B/16
#: is built for its input size, 32 px being 2 x 2 patches of 16; VGG-16's conv5_3 has stride 16)
SMALL = {name: {"inception_v3": 112, "vit_b_16": 32, "vgg16": 32}.get(name, 64) for name in IMAGE_BACKBONES}

#: backbones whose builds and extractions are left to the slow tier (big models: seconds to build, in each worker)
HEAVY = {"inception_v3", "vgg16", "vgg16_pool5", "resnet152", "swin_b", "convnext_base"}
#: every backbone, the heavy ones marked slow
BY_WEIGHT = [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in IMAGE_BACKBONES]
#: the same for extraction, where GoogLeNet is slow too: tests/test_extract.py extracts it in the fast tier
TO_EXTRACT = [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY | {"googlenet"} else name
              for name in IMAGE_BACKBONES]

#: the paper's layer as a torchvision submodule path, written out independently of the registry
PAPER_LAYER = {
    "googlenet": "inception5b",
    "inception_v3": "Mixed_7c",
    "vgg16": "features.29",  # ReLU after conv5_3 = features.28, the 13th conv
    "vgg16_pool5": "features.30",  # the 5th max pool
    "resnet152": "layer4",
    "vit_b_16": "encoder.ln",  # (B, 1 + K*K, C): the class token, then the patch tokens row by row
    "swin_t": "permute",  # the last stage after its LayerNorm, (B, C, K, K)
    "swin_b": "permute",
    "convnext_tiny": "features",  # the last stage, (B, C, K, K)
    "convnext_base": "features",
}


def torchvision_model(arch: str, size: int = 224) -> torch.nn.Module:
    """The torchvision model as torchvision builds it for its ImageNet weights, with random values (ViT for
    ``size`` px inputs)."""
    with_heads = {"aux_logits": True, "transform_input": True, "init_weights": False}
    kwargs = with_heads if arch in ("googlenet", "inception_v3") else {"image_size": size} if arch == "vit_b_16" else {}
    torch.manual_seed(1)
    model = torchvision.models.get_model(arch, weights=None, **kwargs).eval()
    generator = torch.Generator().manual_seed(2)
    for module in model.modules():  # non-trivial running statistics and norms, so a missed load shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__ == "LayerNorm2d":
            bias = module.get_parameter("bias")
            bias.data.copy_(0.1 * torch.randn(bias.shape, generator=generator))
    return model


def reference_cube(name: str, output: torch.Tensor) -> torch.Tensor:
    """The (B, C, K, K) cube of the paper's layer's ``output``, written out from torchvision's own layouts."""
    if name != "vit_b_16":
        return output
    patches = output[:, 1:]  # (B, K*K, C) without the class token
    side = int(patches.shape[1] ** 0.5)
    return patches.reshape(len(output), side, side, -1).permute(0, 3, 1, 2)  # (B, C, K, K)


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


@pytest.mark.parametrize("name", BY_WEIGHT)
def test_registry_grid_matches_dry_run(name):
    spec = BACKBONES[name]
    assert spec.name == name
    assert output_grid(spec, spec.size) == spec.grid
    assert output_grid(spec, SMALL[name]) == 2


def test_todays_backbones_keep_their_grid_at_224_px():
    """ViT-B/16's 196 patch tokens are a 14 x 14 cube; Swin and ConvNeXt end on 7 x 7 (dry forwards at 224 px)."""
    expected = {"vit_b_16": (768, 14), "swin_t": (768, 7), "convnext_tiny": (768, 7)}  # the bigger ones: slow tier
    for name, (channels, grid) in expected.items():
        spec = BACKBONES[name]
        assert (spec.size, spec.channels, output_grid(spec, 224)) == (224, channels, grid), name


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="inception_v3.*64 px is too small"):
        output_grid(BACKBONES["inception_v3"], 64)
    with pytest.raises(BackboneError, match="unknown backbone 'alexnet'.*torchvision:NAME"):
        build_backbone("alexnet", "none")


def test_any_torchvision_network_at_any_node_has_its_grid_discovered():
    spec = backbone_spec("torchvision:regnet_y_400mf", "trunk_output")
    assert (spec.arch, spec.layer, spec.channels, spec.size, spec.grid) == ("regnet_y_400mf", "trunk_output", 440,
                                                                            224, 7)
    assert output_grid(spec, 64) == 2
    other = backbone_spec("resnet152", "layer3")  # a registered network at another node
    assert (other.channels, other.grid) == (1024, 14) and BACKBONES["resnet152"].layer == "layer4"
    for args, message in [
        (("torchvision:regnet_y_400mf", None), "torchvision:regnet_y_400mf: say which node .* --layer"),
        (("torchvision:r3d_18", "layer4"), "torchvision has no classification network 'r3d_18'"),
        (("torchvision:regnet_y_400mf", "layer9"), "no node 'layer9' in RegNet; its last nodes are .*avgpool"),
        (("torchvision:regnet_y_400mf", "flatten"), r"node 'flatten' gives \(1, 440\) at 224 px: neither"),
    ]:
        with pytest.raises(BackboneError, match=message) as error:
            backbone_spec(*args)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", BY_WEIGHT)
def test_random_weights_give_float16_safe_features(name, frames):
    """'none' features must survive the store's float16: finite, not all zero, mostly normal numbers."""
    extractor = build_backbone(name, "none", size=SMALL[name], calibration_frames=frames[:4])
    features = extractor.features(frames, batch_size=4)
    k = output_grid(BACKBONES[name], SMALL[name])
    assert features.shape == (6, BACKBONES[name].channels, k, k) and features.dtype == np.float32
    half = features.astype(np.float16)
    assert np.isfinite(half).all()
    assert np.abs(half).max() > 0.1
    normal = np.abs(half) >= np.finfo(np.float16).smallest_normal
    assert normal.mean() > 0.25, f"only {normal.mean():.2%} of {name} features are float16 normal numbers"
    # the float16 copy keeps the values, not just their sign
    np.testing.assert_allclose(half.astype(np.float32), features, rtol=1e-3, atol=1e-4)


def test_random_weights_that_float16_cannot_hold_are_refused(frames):
    """LayerNorm networks have no statistics to calibrate: ConvNeXt's residual branch scaled by its 1e-6 layer scale
    is the kind of node whose random features would be stored as zeros."""
    with pytest.raises(RandomWeightsError, match=r"convnext_tiny at features.1.0.mul with random weights gives "
                                                 r"features up to [0-9.e-]+, which float16 cannot store"):
        build_backbone("convnext_tiny", "none", size=64, layer="features.1.0.mul", calibration_frames=frames[:2])


@pytest.mark.parametrize("name", BY_WEIGHT)
def test_state_dict_file_matches_torchvision_forward_hook(name, frames, tmp_path):
    """weights=PATH gives exactly the torchvision model's activation at the paper's layer."""
    arch = BACKBONES[name].arch
    reference = torchvision_model(arch, SMALL[name])
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
    expected = reference_cube(name, captured[0])
    assert ours.shape == expected.shape == (3, BACKBONES[name].channels, 2, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
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


@pytest.mark.parametrize("name", IMAGE_BACKBONES)
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


# ------------------------------------------------------------------------------- through a real extraction

#: the tiny synthetic dataset's videos sampled at 3 frames, small batches (tests/conftest.py's TINY: 12 videos)
EXTRACT = {"weights": "none", "frames": 3, "batch_size": 4}


def extracted_cubes(out: Path) -> dict[str, np.ndarray]:
    """Each done video's rgb cube (T, C, K, K) of the store at ``out``, as stored (float16)."""
    store = open_store(out)
    assert all(entry.status == "done" for entry in store.videos)
    return {entry.id: store.read(entry.id, "rgb") for entry in store.videos}


@pytest.fixture(scope="module")
def extracted(tiny_synthetic, dask_client, tmp_path_factory):
    """Backbone name -> its store of the tiny dataset with random weights at its small size, extracted once."""
    return stores_per_backbone(tiny_synthetic, lambda: tmp_path_factory.mktemp("stores"), dask_client,
                               lambda name: {"size": SMALL[name], **EXTRACT})


@pytest.mark.parametrize("name", TO_EXTRACT)
def test_every_backbone_extracts_real_videos_into_a_grid(name, extracted):
    out = extracted(name)
    store = open_store(out)
    info = store.stream_info["rgb"]
    assert (info.backbone, info.layer) == (name, BACKBONES[name].layer) == (store.metadata.backbone,
                                                                           store.metadata.layer)
    assert info.frame_shape == (BACKBONES[name].channels, 2, 2)
    cubes = extracted_cubes(out)
    assert len(cubes) == 12
    for video, cube in cubes.items():
        assert cube.shape == (3, BACKBONES[name].channels, 2, 2) and cube.dtype == np.float16
        assert np.isfinite(cube).all() and cube.any(), f"{name} {video}: a cube of zeros"


def test_softattn_trains_on_a_vision_transformer_store(extracted, tmp_path):
    """ViT-B/16's patch tokens, stored as a grid, are cubes like any other: softattn trains an epoch on them."""
    result = train_model(extracted("vit_b_16"), "softattn", tmp_path / "run", epochs=1, batch_size=2, workers=0,
                         progress=False, model_args={"hidden": 8})
    assert result.epochs == 1 and 0 <= result.test_accuracy <= 1


def test_a_torchvision_network_by_node_with_a_state_dict_file(tiny_synthetic, dask_client, tmp_path):
    """--backbone torchvision:regnet_y_400mf --layer trunk_output --weights PATH: the discovered grid is stored, the
    node is part of the config, and the cubes are torchvision's own forward of the file's weights."""
    reference = torchvision_model("regnet_y_400mf")
    torch.save(reference.state_dict(), tmp_path / "regnet.pth")
    options = {**EXTRACT, "weights": str(tmp_path / "regnet.pth"), "size": 64, "classes": ("SquareRight",)}
    out = tmp_path / "regnet"
    assert not extract("synthetic", str(tiny_synthetic), str(out), client=dask_client,
                       backbone="torchvision:regnet_y_400mf", layer="trunk_output", **options).failed
    store = open_store(out)
    assert store.config["layer"] == "trunk_output" and store.metadata.layer == "trunk_output"
    assert extraction_options(out)[0]["layer"] == "trunk_output"  # store repair extracts at the same node
    assert store.stream_info["rgb"].frame_shape == (440, 2, 2)

    video = store.videos[0]
    frames = decode_video(video.path, Sampling(frames=3)).frames  # (3, H, W, 3)
    chw = TF.to_dtype(torch.from_numpy(frames).permute(0, 3, 1, 2), torch.float32, scale=True)
    resized = TF.resize(chw, [64, 64], antialias=True)
    images = TF.normalize(resized, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # (3, 3, 64, 64)
    with torch.no_grad():
        expected = reference.get_submodule("trunk_output")(reference.get_submodule("stem")(images))  # (3, 440, 2, 2)
    np.testing.assert_allclose(store.read(video.id, "rgb"), expected.numpy().astype(np.float16), rtol=2e-3, atol=2e-3)


def test_a_layer_other_than_the_registered_one_is_part_of_the_config_hash():
    from glimpse.extract.config import ExtractConfig
    from glimpse.store.layout import config_hash

    registered, other = ExtractConfig("synthetic", "resnet152"), ExtractConfig("synthetic", "resnet152", "layer3")
    assert "layer" not in registered.to_dict() and other.to_dict()["layer"] == "layer3"
    assert config_hash(registered.to_dict()) != config_hash(other.to_dict())


def test_the_command_line_takes_torchvision_names_and_refuses_a_missing_node_in_one_line(tiny_synthetic, tmp_path):
    from click.testing import CliRunner

    from glimpse.extract.cli import main

    args = ["--dataset", "synthetic", "--root", str(tiny_synthetic), "--out", str(tmp_path / "s"), "--weights", "none"]
    result = CliRunner().invoke(main, [*args, "--backbone", "torchvision:regnet_y_400mf", "--layer", "layer9"])
    assert result.exit_code == 2 and "no node 'layer9' in RegNet" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, [*args, "--backbone", "alexnet"])
    assert result.exit_code == 2 and "alexnet" in result.output
    assert not (tmp_path / "s").exists()
