"""The attention penalties of the papers and the loss every model trains with.

Attention maps are (batch, time, K, K), non-negative and summing to 1 over the K*K positions;
each penalty returns the per-sample value summed over time, shape (batch,).
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class ScoredOutput(Protocol):
    """What :func:`model_loss` reads of a model's output (``glimpse.train.models.ModelOutput``)."""

    logits: Tensor  # (B, T, classes) or (B, 1, classes)
    aux_losses: dict[str, Tensor]  # name -> (B,)


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


#: how the K x K map is cut into N x N blocks: "even" covers it whole with sides differing by at most one cell;
#: "floor" is Eq. 10 of Quan et al. as printed (side L = floor(K / N), optionally overlapping with a stride)
LAYOUTS = ("even", "floor")
#: the penalties over the blocks' attention: "l21" is Quan et al.'s sum_r ||a[S_r]||_2 (Eq. 10); "sqrt_mass" is
#: sum_r sqrt(sum_{i in S_r} a_i), which a map inside one block minimises (1) and the uniform map maximises
PENALTIES = ("l21", "sqrt_mass")


def default_blocks(size: int) -> int:
    """The paper's N = 4 where the K x K map allows blocks of at least 2 x 2 cells (K >= 8), else floor(K / 2)."""
    return max(1, min(4, size // 2))


def block_layout(size: int, blocks: int, stride: int | None = None, layout: str = "even") -> list[tuple[slice, slice]]:
    """The (rows, columns) slices of every block on a K x K map, refusing a geometry whose penalty cannot act.

    "even": N x N blocks whose sides are the N parts of K that differ by at most one cell (cut at floor(i K / N)),
    so every cell is in exactly one block. "floor" (Quan et al. 2019, Eq. 10): blocks of side L = floor(K / N)
    on the top-left N*L x N*L region, starting every ``stride`` cells (default L; 1 <= stride < L overlaps them,
    Table 4). Refused with a ValueError naming K, N and the fix: N > K, a block of one cell (its l2 norm is its
    mass: a linear push, no structure), and cells that no block covers (attention there escapes the penalty).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"group sparsity: layout must be one of {LAYOUTS}, got {layout!r}")
    if blocks < 1 or size < blocks:
        raise ValueError(f"group sparsity: need 1 <= blocks N <= map side K, got N={blocks}, K={size}; "
                         f"use --blocks {default_blocks(size)}")
    fix = f"use --blocks {default_blocks(size)} (at most floor(K/2) = {max(1, size // 2)} on this map)"
    if layout == "even":
        if stride is not None and size % blocks:
            raise ValueError(f"group sparsity: overlapping blocks (stride {stride}) need equal blocks, but K={size} "
                             f"is not a multiple of N={blocks}; use --set layout=floor with an N that divides K")
        if stride is None:
            cuts = [i * size // blocks for i in range(blocks + 1)]
            if size < 2 * blocks and size > 1:
                raise ValueError(f"group sparsity: N={blocks} blocks on the {size}x{size} map leave blocks of one "
                                 f"cell, whose penalty is their mass (a linear push, no structure); {fix}")
            parts = [slice(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
            return [(r, c) for r in parts for c in parts]
    side = size // blocks
    stride = side if stride is None else stride
    if not 1 <= stride <= side:
        raise ValueError(f"group sparsity: stride must be between 1 and the block side L={side}, got {stride}")
    if side == 1 and size > 1:
        raise ValueError(f"group sparsity: N={blocks} blocks of side L=floor({size}/{blocks})=1 on the {size}x{size} "
                         f"map are single cells, whose penalty is their mass (a linear push, no structure); {fix}")
    if side * blocks < size:
        raise ValueError(f"group sparsity: N={blocks} blocks of side L=floor({size}/{blocks})={side} cover only "
                         f"{side * blocks}x{side * blocks} of the {size}x{size} map (Eq. 10), so attention outside "
                         f"them escapes the penalty; use the default --set layout=even (blocks of sizes differing "
                         f"by at most one cell) or an N that divides K={size}")
    starts = range(0, (blocks - 1) * side + 1, stride)
    return [(slice(r, r + side), slice(c, c + side)) for r in starts for c in starts]


def block_index(size: int, blocks: int, stride: int | None = None, layout: str = "even") -> Tensor:
    """(R, cells) flat indices of each block's cells into a K*K map, padded with K*K (a zero cell appended)."""
    cells = [[r * size + c for r in range(size)[rows] for c in range(size)[cols]]
             for rows, cols in block_layout(size, blocks, stride, layout)]
    width = max(map(len, cells))
    return torch.tensor([c + [size * size] * (width - len(c)) for c in cells])  # (R, width)


@functools.lru_cache(maxsize=64)
def device_block_index(size: int, blocks: int, stride: int | None, layout: str, device: torch.device) -> Tensor:
    """:func:`block_index` on ``device``, copied there once per layout (not at every step)."""
    return block_index(size, blocks, stride, layout).to(device)  # (R, width)


def _blocks(attn: Tensor, blocks: int, stride: int | None, layout: str) -> Tensor:
    """(B, T, K, K) maps -> (B, T, R, width) each block's values, zero-padded to the largest block."""
    index = device_block_index(attn.shape[-1], blocks, stride, layout, attn.device)  # (R, width)
    flat = torch.cat([attn.flatten(2), attn.new_zeros(*attn.shape[:2], 1)], dim=2)  # (B, T, K*K + 1)
    return flat[:, :, index]  # (B, T, R, width)


def group_sparsity(attn: Tensor, blocks: int, stride: int | None = None, layout: str = "even") -> Tensor:
    """Quan et al. 2019 l2,1 penalty sum_t sum_r ||a_t restricted to S_r||_2: (B, T, K, K) -> (B,).

    ``blocks`` is N of Eq. 10; ``layout`` and ``stride`` place the blocks, see :func:`block_layout`. Note that on
    maps summing to 1 the penalty is at least min_r 1/sqrt(|S_r|) per step, reached by any map that is uniform
    inside each block it touches: a uniform map and a map spread evenly over one block score the same; a map
    peaked on a single position scores the most (1). :func:`block_sparsity` has no such tie.
    """
    _check_maps(attn, "group_sparsity")
    return torch.linalg.vector_norm(_blocks(attn, blocks, stride, layout), dim=-1).sum((1, 2))  # (B,)


def block_sparsity(attn: Tensor, blocks: int, stride: int | None = None, layout: str = "even",
                   eps: float = 1e-12) -> Tensor:
    """sum_t sum_r sqrt(sum_{i in S_r} a_t,i): (B, T, K, K) -> (B,); per step 1 for a map inside one block.

    Concave in each block's mass, so under the softmax's sum-to-1 constraint it is smallest (1 per step) when
    all the mass is in one block and largest (sqrt(R) for R equal blocks) for the uniform map: unlike the
    l2,1 norm it rewards choosing a block. ``eps`` keeps the gradient finite on an empty block.
    """
    _check_maps(attn, "block_sparsity")
    mass = _blocks(attn, blocks, stride, layout).sum(-1)  # (B, T, R)
    return ((mass + eps).sqrt() - eps**0.5).sum((1, 2))  # (B,)


def clip_loss(logits: Tensor, target: Tensor, multi_label: bool = False) -> Tensor:
    """(B, T', classes) logits -> (B,) loss summed over steps: cross-entropy on (B,) class indices, or BCE on
    (B, classes) multi-hot targets; every step of a per-step model is scored against its clip's label."""
    steps = logits.shape[1]
    if multi_label:
        hot = target.unsqueeze(1).expand(-1, steps, -1)  # (B, T', classes)
        return F.binary_cross_entropy_with_logits(logits, hot, reduction="none").sum((1, 2))  # (B,)
    ce = F.cross_entropy(logits.flatten(0, 1), target.repeat_interleave(steps), reduction="none")  # (B*T',)
    return ce.view(-1, steps).sum(1)  # (B,)


def model_loss(output: ScoredOutput, labels: Tensor) -> Tensor:
    """Mean over the batch of the cross-entropy summed over time steps plus every auxiliary penalty.

    ``labels`` is (B,) class indices; every step of a per-step model is trained on its clip's label.
    """
    per_sample = clip_loss(output.logits, labels)  # (B,)
    for penalty in output.aux_losses.values():
        per_sample = per_sample + penalty
    return per_sample.mean()
