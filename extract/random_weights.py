"""Random weights made usable for tests and machines without weights: batch-norm statistics calibrated on frames,
and the check that the features fit the store's float16."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.errors import GlimpseError


class RandomWeightsError(GlimpseError, ValueError):
    """Random weights whose features the store's float16 cannot hold."""


def synthetic_calibration_frames(size: int, count: int = 16, seed: int = 0) -> np.ndarray:
    """``count`` seeded smooth random colour images (count, size, size, 3) uint8 for BN calibration."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=generator)  # (N, 3, 6, 6) blobs
    fine = torch.rand(count, 3, size // 4, size // 4, generator=generator)  # (N, 3, S/4, S/4) texture
    images = 0.7 * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images += 0.3 * F.interpolate(fine, size=(size, size), mode="bilinear", align_corners=False)  # (N, 3, S, S)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)


def calibrate_batchnorm(body: nn.Module, images: Tensor, batch_size: int = 16) -> None:
    """Set every batch norm's running statistics to their cumulative average over ``images`` (N, 3, S, S).

    Forward passes in train mode with ``momentum=None``, then back to eval. Needed for random init:
    measured on this project's machine with S=224, eval-mode features at random init are ~1e-11
    (GoogLeNet, below float16's range) or ~1e8 (Inception v3, ResNet-152); after calibration they
    are O(1) (max around 5, about half zeros after the ReLU).
    """
    norms = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    if len(images) < 2:  # train-mode BN on a 1x1 map needs two values per channel
        images = torch.cat([images, images.flip(-1)])  # (2, 3, S, S)
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    body.train()
    with torch.no_grad():
        for batch in torch.tensor_split(images, -(-len(images) // batch_size)):  # balanced, each >= 2
            body(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    body.eval()


def check_float16_range(what: str, features: Tensor) -> None:
    """Refuse random-weight ``features`` (B, C, K, K) that the store's float16 cannot hold: not finite, or all below
    1e-2 (float16's normal numbers end at 6.1e-5: such values keep few bits), or beyond 1e4 (its maximum is 65504).

    Batch-norm networks are calibrated first (:func:`calibrate_batchnorm`); LayerNorm networks (ViT, Swin, ConvNeXt)
    have no statistics to calibrate and are held to the same check: measured at S = 224 and at the tests' sizes,
    their random-init features are O(1) (mean |x| 0.6 to 0.8, max 3 to 5, under 0.02% below 6.1e-5).
    """
    peak = float(features.abs().max()) if features.numel() else 0.0
    if not math.isfinite(peak) or not 1e-2 <= peak <= 1e4:
        raise RandomWeightsError(f"{what} with random weights gives features up to {peak:.3g}, which float16 cannot "
                                 "store faithfully; use --weights imagenet or a state_dict file")
