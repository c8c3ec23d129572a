"""HAN's temporal stream as two-stream networks build it: L stacked flow fields into a CNN whose first layer takes 2L
channels (Simonyan & Zisserman 2014; Wang et al. 2016, TSN, for the cross-modality initialisation).

- **Stacking**: stored step t holds the flows of steps t, t+1, ..., t+L-1 (the stack *starts* at its frame), as
  channels x_t, y_t, x_{t+1}, y_{t+1}, ...; steps past the video's last flow repeat the last one. Each stored flow
  goes from a sampled frame to its successor in the source, so the L fields are consecutive in the source when
  every frame is sampled (the default) and are the flows of L consecutive *sampled* frames otherwise.
- **Scaling**: flow in pixels (at the resolution it was computed at) is clipped to +-:data:`FLOW_BOUND` = 20 px and
  mapped to c / (2 x 20) / 0.226: the two-stream nets' rule (flow stored as uint8 images with 20 px -> 128 steps,
  read as (v / 255 - 0.5) / 0.226 by TSN), without the uint8 rounding; values lie in +-2.21. The field is then
  resized to S x S (bilinear, antialiased) without rescaling its vectors, as resizing the flow images does.
- **Weights**: a ``state_dict`` of a flow-trained network of the same torchvision architecture with a 2L-channel
  first layer (``--flow-weights``, what ``python -m glimpse.train flownet`` writes), or the RGB weights with the
  first layer's filters averaged over RGB and replicated over the 2L channels (cross-modality initialisation).
  GoogLeNet and Inception v3 are built without ``transform_input`` (an RGB-only remapping).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import get_model
from torchvision.models.feature_extraction import create_feature_extractor

from glimpse.extract.backbones import (
    AUX_PREFIXES,
    FeatureExtractor,
    backbone_spec,
    build_backbone,
    builder_kwargs,
    output_grid,
)
from glimpse.extract.config import ExtractConfig
from glimpse.extract.random_weights import calibrate_batchnorm
from glimpse.extract.streams import FlowStream, StreamCompute
from glimpse.extract.weights import check_state_dict, file_sha256, read_state_dict

#: flow clipped to +-FLOW_BOUND pixels before scaling (two-stream nets' bound)
FLOW_BOUND = 20.0
#: TSN's flow input standard deviation (of v / 255 for the uint8 flow image v)
FLOW_STD = 0.226
#: flow fields per stack (two-stream networks' L)
DEFAULT_STACK = 10
#: identity prefix of cross-modality initialisation from the RGB weights of that identity
CROSS_MODALITY = "cross-modality:"


def stack_indices(frames: int, length: int) -> np.ndarray:
    """(frames, length) int64: the flow steps of each step's stack, t .. t + length - 1, the last step repeated."""
    return np.minimum(np.arange(frames)[:, None] + np.arange(length)[None, :], frames - 1)


def flow_stacks(flow: Tensor, steps: np.ndarray, length: int) -> Tensor:
    """(T, 2, h, w) flow -> (len(steps), 2L, h, w): the stacks starting at ``steps`` (channels x_t, y_t, x_t+1, ...)."""
    index = torch.from_numpy(stack_indices(len(flow), length)[steps]).to(flow.device)  # (n, L)
    return flow[index].flatten(1, 2)  # (n, L, 2, h, w) -> (n, 2L, h, w)


def flow_input(stacks: Tensor, size: int) -> Tensor:
    """(n, 2L, h, w) flow stacks in pixels -> (n, 2L, S, S) float32 network input (the module docstring's rule)."""
    x = stacks.float().clamp(-FLOW_BOUND, FLOW_BOUND) / (2 * FLOW_BOUND) / FLOW_STD
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def cross_modality(weight: Tensor, channels: int) -> Tensor:
    """(O, 3, k, k) RGB first-layer filters -> (O, channels, k, k): their mean over RGB, replicated."""
    return weight.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1).contiguous()


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The (qualified name, module) of the first convolution of ``model``: the stem of every backbone."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no convolution to take stacked flow")


def _widened(model: nn.Module, channels: int) -> nn.Module:
    """``model`` with its first convolution taking ``channels`` input channels (same filters' shape otherwise)."""
    name, conv = first_conv(model)
    if conv.in_channels != 3:
        raise ValueError(f"{type(model).__name__}: its first convolution {name} takes {conv.in_channels} channels, "
                         "not RGB")
    parent_name, _, child = name.rpartition(".")
    shape = cast(Any, (conv.kernel_size, conv.stride, conv.padding, conv.dilation))  # the conv's own, as it took them
    wide = nn.Conv2d(channels, conv.out_channels, *shape, groups=conv.groups, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode, device=conv.weight.device)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, wide)
    return model


def flow_body(backbone: str, layer: str | None, size: int, length: int) -> nn.Module:
    """The backbone's torchvision network with a 2L-channel first layer, cut at its layer (seeded random values:
    load a state into it)."""
    spec = backbone_spec(backbone, layer)
    kwargs = builder_kwargs(spec.arch, size, init_weights=False)
    if "transform_input" in kwargs:
        kwargs["transform_input"] = False  # maps RGB to the ImageNet weights' own normalisation: not for flow
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _widened(get_model(spec.arch, weights=None, **kwargs), 2 * length)
    return create_feature_extractor(model.eval(), {spec.layer: "features"})


def cross_modality_state(rgb: nn.Module, length: int) -> dict[str, Tensor]:
    """The state of a flow body from the cut RGB network ``rgb``: the same values, the first layer's filters
    averaged over RGB and replicated over 2L channels."""
    name, conv = first_conv(rgb)
    state = {key: value.detach().clone() for key, value in rgb.state_dict().items()}
    state[f"{name}.weight"] = cross_modality(conv.weight.detach(), 2 * length)
    return state


def checked_flow_state(body: nn.Module, path: str, backbone: str) -> dict[str, Tensor]:
    """The flow ``state_dict`` file at ``path`` as ``body`` loads it (keys of parts the cut does not use, such as a
    classifier, dropped); a file of another architecture or stack length is refused in one line naming it."""
    state = read_state_dict(path)
    own = body.state_dict()
    used = {key.split(".")[0] for key in own}
    unused = tuple(f"{key.split('.')[0]}." for key in state if key.split(".")[0] not in used)
    try:
        state = check_state_dict(own, state, path, AUX_PREFIXES.get(backbone_spec(backbone).arch, ()) + unused)
    except ValueError as err:
        raise ValueError(f"{err} (a flow network's first layer takes 2 x --flow-stack channels)") from None
    return state | {k: torch.zeros_like(v) for k, v in own.items()
                    if k.endswith("num_batches_tracked") and k not in state}


def check_flow_weights(path: str, backbone: str, layer: str | None, size: int, length: int) -> None:
    """Refuse, before any work, a ``--flow-weights`` file that does not fit the flow_stack network (a ValueError)."""
    with torch.device("meta"):
        checked_flow_state(flow_body(backbone, layer, size, length), path, backbone)


def load_flow_state(body: nn.Module, path: str, backbone: str) -> str:
    """Load the flow ``state_dict`` file at ``path`` into ``body`` (see :func:`checked_flow_state`); its identity."""
    body.load_state_dict(checked_flow_state(body, path, backbone))
    return f"sha256:{file_sha256(path)}"


def flow_network(config: ExtractConfig, rgb: FeatureExtractor | None, device: str) -> FeatureExtractor:
    """The flow_stack stream's extractor of ``config``: its ``--flow-weights`` file, or cross-modality from ``rgb``
    (the worker's RGB backbone)."""
    body = flow_body(config.backbone, config.layer, config.size, config.flow_stack)
    if config.flow_stack_weights is not None:
        identity = load_flow_state(body, config.flow_stack_weights.load, config.backbone)
    else:
        assert rgb is not None
        body.load_state_dict(cross_modality_state(rgb.body, config.flow_stack))
        identity = CROSS_MODALITY + rgb.weights_identity
    return FeatureExtractor(backbone_spec(config.backbone, config.layer), body, config.size, identity, device)


def initial_flow_body(backbone: str, layer: str | None, size: int, length: int, weights: str) -> tuple[nn.Module, str]:
    """A flow body to fine-tune: cross-modality from RGB ``weights`` (``imagenet``, ``none``, a file), and its
    identity."""
    rgb = build_backbone(backbone, weights, "cpu", size=size, layer=layer)
    body = flow_body(backbone, layer, size, length)
    body.load_state_dict(cross_modality_state(rgb.body, length))
    return body, CROSS_MODALITY + rgb.weights_identity


def recompute_batchnorm(body: nn.Module, images: Tensor) -> bool:
    """Set ``body``'s batch-norm statistics to their average over ``images`` (n, 2L, S, S); False: it has none."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in body.modules()):
        return False
    calibrate_batchnorm(body, images)
    return True


class FlowStackStream(StreamCompute):
    """CNN conv cubes (T, C, K, K) of L stacked flows into a network whose first layer takes 2L channels; step t's
    stack starts at t. Computed whole (the stacks are cut from the video's flow batch by batch, padded to the batch
    size so a frame's features do not depend on its batch-mates)."""

    source = "flow"

    def __init__(self, models: Any) -> None:
        super().__init__(models)
        rgb = models.backbone if self.config.flow_stack_weights is None else None
        self.backbone = flow_network(self.config, rgb, self.runtime.device)
        self.batch_size = self.runtime.batch_size

    @classmethod
    def check(cls, config: ExtractConfig) -> str | None:
        if config.flow_stack < 1:
            return f"needs --flow-stack >= 1, got {config.flow_stack}"
        return FlowStream.check(config)

    @classmethod
    def describe(cls, config: ExtractConfig) -> dict[str, Any]:
        spec = backbone_spec(config.backbone, config.layer)
        return {"frame_shape": [spec.channels, output_grid(spec, config.size), output_grid(spec, config.size)],
                "backbone": spec.name, "layer": spec.layer,
                "method": f"{config.flow_stack} stacked flows from each step, {config.flow_stack_init}"}

    def compute(self, source: Any, result: dict[str, Any]) -> np.ndarray:
        flow = torch.as_tensor(source).to(self.backbone.device).float()  # (T, 2, h, w)
        out = np.empty((len(flow), self.backbone.spec.channels, self.backbone.grid, self.backbone.grid), np.float32)
        for start in range(0, len(flow), self.batch_size):
            steps = np.arange(start, min(start + self.batch_size, len(flow)))
            images = flow_input(flow_stacks(flow, steps, self.config.flow_stack), self.config.size)  # (n, 2L, S, S)
            out[start : start + len(steps)] = self.backbone.fixed_batch(images, self.batch_size).cpu().numpy()
        return out  # (T, C, K, K)
