"""The attention penalties of the papers and the loss every model trains with.

Attention maps are (batch, time, K, K), non-negative and summing to 1 over the K*K positions;
each penalty returns the per-sample value summed over time, shape (batch,).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # train.models imports this module for its penalties
    from glimpse.train.models.base import ModelOutput


def _check_maps(attn: Tensor, what: str) -> None:
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"{what}: attention must be (batch, time, K, K), got {tuple(attn.shape)}")


def doubly_stochastic(attn: Tensor) -> Tensor:
    """Sharma et al. 2015 attention penalty sum_i (1 - sum_t l_t,i)^2: (B, T, K, K) -> (B,).

    It pushes every position to receive a total attention of 1 over the clip, so the model looks
    at every part of the frame at some time step.
    """
    _check_maps(attn, "doubly_stochastic")
    return (1 - attn.sum(1)).square().flatten(1).sum(1)  # (B,)


def block_layout(size: int, blocks: int, stride: int | None = None) -> tuple[int, int, int]:
    """Geometry of the group-sparsity blocks on a K x K map: (side L, stride, blocks per side).

    L = floor(K / N) (Quan et al. 2019, Eq. 10). Without a stride the N x N blocks tile the top-left
    N*L x N*L region without overlap; with a stride s (1 <= s <= L) blocks of side L start every s
    positions in that same region, so they overlap (Table 4). Positions beyond N*L are in no block.
    """
    if blocks < 1 or size < blocks:
        raise ValueError(f"group sparsity: need 1 <= blocks N <= map side K, got N={blocks}, K={size}")
    side = size // blocks
    stride = side if stride is None else stride
    if not 1 <= stride <= side:
        raise ValueError(f"group sparsity: stride must be between 1 and the block side L={side}, got {stride}")
    return side, stride, (blocks - 1) * side // stride + 1


def group_sparsity(attn: Tensor, blocks: int, stride: int | None = None) -> Tensor:
    """Quan et al. 2019 l2,1 penalty sum_t sum_r ||a_t restricted to S_r||_2: (B, T, K, K) -> (B,).

    ``blocks`` is N of Eq. 10 (N x N blocks of side L = floor(K / N)); ``stride`` gives the
    overlapping-blocks variant, see :func:`block_layout`. Note that on maps summing to 1 the penalty
    is at least 1/L per step, reached by any map that is uniform inside each block it touches: a
    uniform map and a map spread evenly over one block score the same; a map peaked on a single
    position scores the most (1).
    """
    _check_maps(attn, "group_sparsity")
    side, stride, count = block_layout(attn.shape[-1], blocks, stride)
    region = attn[..., : blocks * side, : blocks * side]  # (B, T, N*L, N*L)
    tiles = region.unfold(2, side, stride).unfold(3, side, stride)  # (B, T, n, n, L, L)
    norms = torch.linalg.vector_norm(tiles.flatten(-2), dim=-1)  # (B, T, n, n)
    return norms.sum((1, 2, 3))  # (B,)


def model_loss(output: ModelOutput, labels: Tensor) -> Tensor:
    """Mean over the batch of the cross-entropy summed over time steps plus every auxiliary penalty.

    ``labels`` is (B,) class indices; every step of a per-step model is trained on its clip's label.
    """
    logits = output.logits  # (B, T', classes)
    steps = logits.shape[1]
    ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(steps), reduction="none")  # (B*T',)
    per_sample = ce.view(-1, steps).sum(1)  # (B,)
    for penalty in output.aux_losses.values():
        per_sample = per_sample + penalty
    return per_sample.mean()
