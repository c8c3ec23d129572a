"""Backbones of the extraction stage: torchvision ImageNet networks cut at a node that keeps the spatial grid.

Decoded uint8 RGB frames (T, H, W, 3) -> feature cubes (T, C, K, K), the grid the attention models look at. Each
net is a torchvision model cut with ``create_feature_extractor`` at a graph node; nothing is re-implemented here.
The registry :data:`BACKBONES` holds the papers' CNNs at the layer each paper used and today's networks at their
last grid (ViT-B/16's patch tokens, Swin's and ConvNeXt's last stage); ``torchvision:NAME`` with a node
(``--layer``) cuts any torchvision classification network, its grid and channels found by a dry forward.
Weights are one of:

- ``"imagenet"``: torchvision's default ImageNet weights for the architecture, read from torch's hub
  cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``). Nothing is ever
  downloaded: a missing file raises :class:`WeightsNotAvailable` naming the file, its URL and the
  directory to put it in. A member name of the architecture's weights enum (``"IMAGENET1K_V1"``)
  picks other torchvision weights the same way.
- a path to a ``state_dict`` file of the same torchvision architecture (identity: its sha256).
- ``"none"``: seeded random init, batch-norm statistics calibrated on frames, then checked to fit float16
  (:mod:`glimpse.extract.random_weights`; LayerNorm networks have no statistics to calibrate).

Each Dask worker calls :func:`build_backbone` once and then :meth:`FeatureExtractor.features`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models._api import WeightsEnum
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from glimpse.errors import GlimpseError
from glimpse.extract.device import upload
from glimpse.extract.random_weights import calibrate_batchnorm, check_float16_range, synthetic_calibration_frames
from glimpse.extract.weights import cached_weights_file, check_state_dict, file_sha256, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How a node's output holds the grid: ``grid`` (B, C, K, K); ``tokens`` (B, 1 + K*K, C), a class token then the
#: patch tokens row by row (ViT), of which the cube keeps the patch tokens and drops the class token.
GRID, TOKENS = "grid", "tokens"

#: ``--backbone torchvision:NAME``: any classification network of torchvision, cut at ``--layer NODE``.
TORCHVISION = "torchvision:"


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: torchvision ``arch`` cut at graph node ``layer`` -> (channels, grid, grid) at ``size``, its
    input normalised with ``mean`` and ``std`` (per RGB channel, on [0, 1] values)."""

    name: str
    arch: str  # torchvision builder name
    layer: str  # create_feature_extractor node name
    channels: int  # C of the feature cube
    size: int  # default input side S (frames are resized to S x S)
    grid: int  # K of the feature cube at the default size
    layout: str = GRID  # how the node holds the grid: GRID or TOKENS
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


BACKBONES: dict[str, BackboneSpec] = {
    # Sharma et al. 2015 soft attention; the l2,1 structure-regularized model
    "googlenet": BackboneSpec("googlenet", "googlenet", "inception5b", 1024, 224, 7),
    "inception_v3": BackboneSpec("inception_v3", "inception_v3", "Mixed_7c", 2048, 299, 8),
    # HAN: conv5_3 after its ReLU (features.28 is the conv, features.29 its ReLU)
    "vgg16": BackboneSpec("vgg16", "vgg16", "features.29", 512, 224, 14),
    # ConvLSTM attention report: pool5
    "vgg16_pool5": BackboneSpec("vgg16_pool5", "vgg16", "features.30", 512, 224, 7),
    # CHAM
    "resnet152": BackboneSpec("resnet152", "resnet152", "layer4", 2048, 224, 7),
    # today's: ViT-B/16's 196 patch tokens after the encoder's final LayerNorm (the class token is dropped)
    "vit_b_16": BackboneSpec("vit_b_16", "vit_b_16", "encoder.ln", 768, 224, 14, TOKENS),
    # Swin's last stage after its LayerNorm, permuted to (C, K, K) by the model itself
    "swin_t": BackboneSpec("swin_t", "swin_t", "permute", 768, 224, 7),
    "swin_b": BackboneSpec("swin_b", "swin_b", "permute", 1024, 224, 7),
    # ConvNeXt's last stage (its final LayerNorm belongs to the classifier)
    "convnext_tiny": BackboneSpec("convnext_tiny", "convnext_tiny", "features", 768, 224, 7),
    "convnext_base": BackboneSpec("convnext_base", "convnext_base", "features", 1024, 224, 7),
}

#: builder keyword arguments per architecture, the same for every kind of weights. GoogLeNet and
#: Inception v3 always get ``transform_input=True`` (what torchvision sets with its ImageNet weights,
#: which were trained on inputs in [-1, 1]): frames are always ImageNet-normalized and the net maps
#: them back to [-1, 1] itself, so random, file and ImageNet weights see the same preprocessing.
ARCH_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "transform_input": True},
    "inception_v3": {"aux_logits": False, "transform_input": True},
}

#: state_dict key prefixes of auxiliary heads that torchvision's weights hold and the models built without
#: ``aux_logits`` lack; besides them, every key of a part of the network the cut does not use is optional.
AUX_PREFIXES: dict[str, tuple[str, ...]] = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}

CALIBRATION_FRAMES = 64  # at most this many frames calibrate batch norm (random_weights.calibrate_batchnorm)


class BackboneError(GlimpseError, ValueError):
    """A backbone that cannot be built as asked: an unknown name, a node the network lacks or that holds no grid,
    an input too small."""


def backbone_arch(name: str) -> str:
    """The torchvision builder of backbone ``name`` (a key of :data:`BACKBONES` or ``torchvision:NAME``)."""
    if name.startswith(TORCHVISION):
        arch = name[len(TORCHVISION) :]
        if arch not in list_models(module=torchvision.models):
            raise BackboneError(f"{name}: torchvision has no classification network {arch!r} (see "
                                "torchvision.models.list_models(module=torchvision.models))")
        return arch
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}, or {TORCHVISION}NAME")
    return BACKBONES[name].arch


def builder_kwargs(arch: str, size: int, init_weights: bool) -> dict:
    """Keyword arguments of ``arch``'s builder: :data:`ARCH_KWARGS`, ``init_weights`` where the builder has the flag
    (False for meta-device builds), and ViT's ``image_size`` (its position embeddings are per patch of S x S)."""
    kwargs = dict(ARCH_KWARGS.get(arch, {}))
    if arch in ARCH_KWARGS:  # exactly the builders with an init_weights flag
        kwargs["init_weights"] = init_weights
    if arch.startswith("vit_"):
        kwargs["image_size"] = size
    return kwargs


def _meta_model(arch: str, size: int) -> nn.Module:
    """``arch`` with no values (meta device): built there when its builder allows, else built on the CPU (RegNet
    computes its widths with tensors) and moved there."""
    try:
        with torch.device("meta"):
            return get_model(arch, weights=None, **builder_kwargs(arch, size, init_weights=False))
    except NotImplementedError:
        with torch.random.fork_rng(devices=[]):
            return get_model(arch, weights=None, **builder_kwargs(arch, size, init_weights=False)).to("meta")


def cut_model(model: nn.Module, name: str, layer: str) -> nn.Module:
    """``model`` (eval mode) cut at node ``layer``, whose output the returned module gives as ``["features"]``."""
    try:
        return create_feature_extractor(model.eval(), {layer: "features"})
    except ValueError:
        last = get_graph_node_names(model)[1][-8:]
        raise BackboneError(f"{name}: no node {layer!r} in {type(model).__name__}; its last nodes are "
                            f"{', '.join(last)} (torchvision's get_graph_node_names lists them all)") from None


@functools.cache
def _node_shape(name: str, arch: str, layer: str, size: int) -> tuple[int, ...]:
    """Shape of node ``layer``'s output for one S x S image (dry forward on 'meta')."""
    body = cut_model(_meta_model(arch, size), name, layer)
    try:
        return tuple(body(torch.empty(1, 3, size, size, device="meta"))["features"].shape)
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackboneError(f"backbone {name}: input size {size} px is too small ({reason})") from None


def discover(name: str, arch: str, layer: str, size: int) -> tuple[int, int, str]:
    """(channels, grid, layout) of ``arch``'s node ``layer`` at S = ``size``, from a dry forward: a (1, C, K, K)
    output is a grid, a (1, 1 + K*K, C) sequence is ViT's class and patch tokens; anything else is refused."""
    shape = _node_shape(name, arch, layer, size)
    if len(shape) == 4 and shape[2] == shape[3]:
        return shape[1], shape[2], GRID
    side = math.isqrt(shape[1] - 1) if len(shape) == 3 and shape[1] > 1 else 0
    if len(shape) == 3 and side * side == shape[1] - 1:
        return shape[2], side, TOKENS
    raise BackboneError(f"{name}: node {layer!r} gives {shape} at {size} px: neither a (B, C, K, K) grid nor "
                        "(B, 1 + K*K, C) class and patch tokens")


@functools.cache
def backbone_spec(name: str, layer: str | None = None) -> BackboneSpec:
    """The backbone ``name`` cut at ``layer`` (None: its registered layer): a registry entry, the entry at another
    node, or ``torchvision:NAME`` at node ``layer`` (required) at its weights' crop size, normalised as its weights
    are; channels, grid and layout of another node come from a dry forward."""
    arch = backbone_arch(name)
    if name in BACKBONES:
        spec = BACKBONES[name]
        if layer is None or layer == spec.layer:
            return spec
    else:
        if layer is None:
            raise BackboneError(f"{name}: say which node to cut at with --layer NODE (torchvision's "
                                "get_graph_node_names lists them; e.g. trunk_output for RegNet)")
        preset = get_model_weights(arch)["DEFAULT"].transforms.keywords
        spec = BackboneSpec(name, arch, layer, 0, int(preset.get("crop_size", 224)), 0,
                            mean=tuple(preset.get("mean", IMAGENET_MEAN)), std=tuple(preset.get("std", IMAGENET_STD)))
    channels, grid, layout = discover(name, arch, layer, spec.size)
    return dataclasses.replace(spec, layer=layer, channels=channels, grid=grid, layout=layout)


def output_grid(spec: BackboneSpec, size: int) -> int:
    """K of the (C, K, K) feature cube of backbone ``spec`` for S = ``size`` input (dry run on 'meta')."""
    channels, grid, layout = discover(spec.name, spec.arch, spec.layer, size)
    if (channels, layout) != (spec.channels, spec.layout):
        raise AssertionError(f"backbone {spec.name}: {spec.layer} gives {channels} channels as {layout}, "
                             f"registry says {spec.channels} as {spec.layout}")
    return grid


def resolve_weights(arch: str, weights: str) -> WeightsEnum | Path | None:
    """``"none"`` -> None, ``"imagenet"`` or an enum member name -> the torchvision enum, else a file path."""
    if weights == "none":
        return None
    enum = get_model_weights(arch)
    if weights == "imagenet":
        return enum.DEFAULT
    if weights in enum.__members__:
        return enum[weights]
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights {weights!r}: no such file (expected 'imagenet', 'none', one of "
            f"{', '.join(enum.__members__)}, or a state_dict path)"
        )
    return path


def weights_identity(weights: str, name: str | None = None) -> str:
    """Identity of ``weights`` for store metadata: ``"none"``, a torchvision enum name, or ``"sha256:<hex>"``.

    ``"imagenet"`` depends on the architecture (ResNet-152's default is IMAGENET1K_V2), so it needs
    the backbone ``name``. A :class:`FeatureExtractor` built with ``"none"`` and calibration frames
    reports a longer identity that includes those frames (see :func:`build_backbone`).
    """
    if weights == "none":
        return "none"
    if name is None:
        if weights == "imagenet":
            raise ValueError("weights_identity('imagenet') needs the backbone name: the enum depends on it")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights {weights!r}: no such file")
        return f"sha256:{file_sha256(weights)}"
    resolved = resolve_weights(backbone_arch(name), weights)
    return resolved.name if isinstance(resolved, WeightsEnum) else f"sha256:{file_sha256(resolved)}"


class FeatureExtractor(nn.Module):
    """uint8 RGB frames -> (T, C, K, K) float32 features of one backbone; eval mode, no grad. Attributes: ``spec``
    (:class:`BackboneSpec`), ``size`` (S), ``grid`` (K at S), ``weights_identity`` (for store metadata), ``device``."""

    def __init__(self, spec: BackboneSpec, body: nn.Module, size: int, weights_identity: str, device: str):
        super().__init__()
        self.spec, self.size, self.weights_identity = spec, size, weights_identity
        self.grid = self.grid_at(size)
        self.device = torch.device(device)
        self.body = body.eval().to(self.device)
        self.register_buffer("mean", torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def grid_at(self, size: int) -> int:
        """K of this extractor's cubes at S = ``size``."""
        return output_grid(self.spec, size)

    def preprocess(self, frames: np.ndarray | Tensor) -> Tensor:
        """(T, H, W, 3) uint8 RGB (numpy or torch) -> (T, 3, S, S) float, ImageNet-normalized.

        Frames are resized to S x S (aspect ratio not kept) with antialiased bilinear interpolation.
        """
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            what = f"{tuple(frames.shape)} {frames.dtype}" if hasattr(frames, "shape") else type(frames).__name__
            raise ValueError(f"{self.spec.name}: frames must be (T, H, W, 3) uint8 RGB, got {what}")
        chunks = []
        for chunk in frames.split(16):  # bounds float memory for long full-resolution clips
            x = upload(chunk, self.device).permute(0, 3, 1, 2).float().div_(255)  # (t, 3, H, W) in [0, 1]
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            chunks.append((x - self.mean) / self.std)  # (t, 3, S, S)
        if not chunks:
            return torch.empty(0, 3, self.size, self.size, device=self.device)
        return torch.cat(chunks).contiguous()  # (T, 3, S, S); one memory layout, hence one set of conv kernels

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, K, K) float32 features."""
        with torch.inference_mode():
            out = self.body(images)["features"]  # (B, C, K, K), or (B, 1 + K*K, C) tokens
            if self.spec.layout == TOKENS:  # the class token dropped, the patch tokens back on their grid, row by row
                out = out[:, 1:].transpose(1, 2).unflatten(2, (self.grid, self.grid))  # (B, C, K, K)
            return out.float().contiguous()

    def features(self, frames: np.ndarray | Tensor, batch_size: int = 32) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames -> (T, C, K, K) float32 numpy features, ``batch_size`` frames at a time.

        Same frames and ``batch_size`` give identical features, whatever other frames share a batch
        (see :meth:`fixed_batch`); another ``batch_size`` may change the last float32 bits.
        """
        out = np.empty((len(frames), self.spec.channels, self.grid, self.grid), dtype=np.float32)
        for start in range(0, len(frames), batch_size):
            batch = self.preprocess(frames[start : start + batch_size])  # (b, 3, S, S)
            out[start : start + len(batch)] = self.fixed_batch(batch, batch_size).cpu().numpy()  # (b, C, K, K)
        return out

    def fixed_batch(self, images: Tensor, batch_size: int) -> Tensor:
        """(b, 3, S, S) preprocessed images, b <= ``batch_size`` -> (b, C, K, K), run as a batch of ``batch_size``.
        A short batch is padded with zeros: CPU conv kernels are chosen per batch shape (a batch of 1 differed by
        ~3e-4 measured), while at one shape a frame's features do not depend on its batch-mates."""
        pad = batch_size - len(images)
        if pad > 0:
            images = torch.cat([images, images.new_zeros((pad, *images.shape[1:]))])  # (batch_size, 3, S, S)
        return self(images.contiguous())[: batch_size - max(pad, 0)]  # (b, C, K, K)


def loaded_body(spec: BackboneSpec, weights: WeightsEnum | Path, size: int) -> tuple[nn.Module, str]:
    """The cut network of ``spec`` holding ``weights`` (torchvision enum or file), and their identity.

    The model is built on the meta device and only the cut part is materialized, so no time goes into
    random init (VGG-16's classifier alone is 100M parameters) before the weights overwrite it. Keys of the
    parts the cut does not use (classifier heads) may be missing from the file or hold any shape.
    """
    if isinstance(weights, WeightsEnum):
        source, identity = f"{weights} ({cached_weights_file(weights)})", weights.name  # raises before any download
        state = weights.get_state_dict(progress=False, check_hash=False, map_location="cpu", weights_only=True)
    else:
        source, identity, state = str(weights), f"sha256:{file_sha256(weights)}", read_state_dict(weights)
    model = _meta_model(spec.arch, size)
    body = cut_model(model, spec.name, spec.layer)
    used = {key.split(".")[0] for key in body.state_dict()}
    unused = tuple(f"{child}." for child, _ in model.named_children() if child not in used)
    state = check_state_dict(model.state_dict(), state, source, AUX_PREFIXES.get(spec.arch, ()) + unused)
    if {name for name, _ in body.named_buffers()} - set(body.state_dict()):  # buffers no file holds: built ones
        with torch.random.fork_rng(devices=[]):
            body = cut_model(get_model(spec.arch, weights=None, **builder_kwargs(spec.arch, size, True)), spec.name,
                        spec.layer)
    else:
        body = body.to_empty(device="cpu")
    own = body.state_dict()
    filled = {k: torch.zeros_like(v) for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    body.load_state_dict({k: state[k] for k in own if k in state} | filled)  # strict: any other gap raises
    return body.eval(), identity


def build_backbone(
    name: str,
    weights: str = "imagenet",
    device: str = "cpu",
    calibration_frames: np.ndarray | None = None,
    size: int | None = None,
    layer: str | None = None,
) -> FeatureExtractor:
    """Build the feature extractor of backbone ``name`` (a key of :data:`BACKBONES`, or ``torchvision:NAME`` with a
    ``layer``) cut at ``layer`` (None: its registered one).

    ``weights``: ``"imagenet"`` (or a torchvision enum member name such as ``"IMAGENET1K_V1"``) from
    torch's hub cache, never downloaded (:class:`WeightsNotAvailable`); a ``state_dict`` file path of
    the same architecture (the keys of parts the cut does not use may be missing); or ``"none"``.

    ``"none"`` builds the net after ``torch.manual_seed(0)`` (caller's RNG state untouched), so every
    worker gets the same weights, then calibrates batch-norm statistics on ``calibration_frames``
    (T, H, W, 3) uint8 (first :data:`CALIBRATION_FRAMES` used) or, if None, on seeded synthetic images,
    and checks that the features on them fit float16 (:mod:`glimpse.extract.random_weights`).
    Workers must pass the same calibration frames to get the same network; the extractor's
    ``weights_identity`` is then ``"none+calib:<sha256 of the frames>"`` (plain ``"none"`` for the
    synthetic ones). VGG-16 has no batch norm: its random-init features measured O(0.1) at S = 96 and 224 (conv5_3
    mean |x| 0.06, max 0.7; pool5 mean 0.09), well inside float16's normal range (>= 6.1e-5).

    ``size``: input side S (default ``spec.size``); small sizes are for tests.
    """
    spec = backbone_spec(name, layer)
    size = spec.size if size is None else int(size)
    output_grid(spec, size)  # fails early and clearly on a too small size
    resolved = resolve_weights(spec.arch, weights)
    if resolved is not None:
        body, identity = loaded_body(spec, resolved, size)
        return FeatureExtractor(spec, body, size, identity, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_model(spec.arch, weights=None, **builder_kwargs(spec.arch, size, init_weights=True))
    body = cut_model(model, spec.name, spec.layer)
    identity = "none"
    if calibration_frames is not None:
        calibration_frames = np.ascontiguousarray(calibration_frames[:CALIBRATION_FRAMES])
        digest = hashlib.sha256(repr(calibration_frames.shape).encode() + calibration_frames.tobytes())
        identity = f"none+calib:{digest.hexdigest()}"
    extractor = FeatureExtractor(spec, body, size, identity, device)
    frames = synthetic_calibration_frames(size) if calibration_frames is None else calibration_frames
    images = extractor.preprocess(frames)  # (N, 3, S, S)
    calibrate_batchnorm(extractor.body, images)
    extractor.eval()
    check_float16_range(f"{spec.name} at {spec.layer}", extractor(images[:2]))
    return extractor


import glimpse.extract.video_backbones  # noqa: E402, F401  (registers the video networks in BACKBONES)
