"""Attention with structure regularization (Quan, Chen, Xu & Ji 2019).

A two-level LSTM (Eq. 2-6) reads x_t = X_t a_t (Eq. 9), with a_t = softmax(W h2_{t-1}) and a_1
uniform (Eq. 8), and predicts every frame with softmax(tanh(B h2_t)) (Eq. 7). The loss (Eq. 11)
adds lambda times the l2,1 group-sparsity penalty of the maps over N x N blocks of side
L = floor(K / N) (Eq. 10), or overlapping blocks with a stride (Table 4).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from glimpse.train.losses import block_layout, group_sparsity
from glimpse.train.models.base import LSTMStack, ModelConfig, ModelOutput, ModelSpec, attend, check_streams, positions
from torch import Tensor, nn

PAPER = ("Quan, Chen, Xu & Ji 2019, Attention with structure regularization for action recognition "
         "(CVIU 187, doi:10.1016/j.cviu.2019.102794)")


@dataclass(frozen=True)
class RegAttentionConfig(ModelConfig):
    """The paper's defaults: N = 4 blocks per side, lambda = 1e-4, gamma = 1e-5, hidden 512, dropout 0.5.

    ``stride`` None gives non-overlapping blocks; 1 <= stride < L gives the overlapping variant.
    """

    hidden: int = 512
    blocks: int = 4
    stride: int | None = None
    lam: float = 1e-4
    weight_decay: float = 1e-5


class RegAttention(nn.Module):
    """Two-level attention LSTM with per-frame predictions and a group-sparsity penalty on its maps."""

    def __init__(self, config: RegAttentionConfig) -> None:
        super().__init__()
        side, _, _ = block_layout(config.size, config.blocks, config.stride)  # fails early on a bad geometry
        if side * config.blocks < config.size:
            warnings.warn(f"regattn: N={config.blocks} blocks of side L=floor({config.size}/{config.blocks})={side} "
                          f"cover only {side * config.blocks}x{side * config.blocks} of the {config.size}x"
                          f"{config.size} map (Eq. 10); attention outside them is not penalized", stacklevel=2)
        self.config = config
        H = config.hidden
        self.stack = LSTMStack(config.channels, H, 2, config.dropout)  # the two levels (Eq. 2-6)
        self.locate = nn.Linear(H, config.size * config.size, bias=False)  # W (Eq. 8)
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(H, config.classes, bias=False)  # B (Eq. 7)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-frame logits tanh(B h2_t) (B, T, classes) and attention (B, T, K, K)."""
        cfg = self.config
        B, T = check_streams("regattn", cfg, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        P = X.shape[2]
        state, outs, maps = None, [], []
        a_t = X.new_full((B, P), 1.0 / P)  # (B, P), a_1 uniform (Eq. 8)
        for t in range(T):
            if t > 0:
                a_t = torch.softmax(self.locate(state[-1][0]), dim=-1)  # (B, P), from h2_{t-1} (Eq. 8)
            x_t = attend(a_t, X[:, t])  # (B, C), X_t a_t (Eq. 9)
            state = self.stack.step(self.drop(x_t), state)  # both levels, one step
            outs.append(state[-1][0])  # h2_t, (B, H)
            maps.append(a_t)
        logits = torch.tanh(self.classify(self.drop(torch.stack(outs, 1))))  # (B, T, classes), Eq. 7 as printed
        attention = torch.stack(maps, 1).view(B, T, cfg.size, cfg.size)  # (B, T, K, K)
        penalty = cfg.lam * group_sparsity(attention, cfg.blocks, cfg.stride)  # (B,), Eq. 10-11
        return ModelOutput(logits, attention, {"group_sparsity": penalty})


REGATTN = ModelSpec(
    "regattn", RegAttention, RegAttentionConfig, PAPER,
    "two-level LSTM (Eq. 2-6); a_1 = 1/K^2, a_t = softmax(W h2_{t-1}) (Eq. 8); x_t = X_t a_t (Eq. 9); "
    "y_t = softmax(tanh(B h2_t)) (Eq. 7); loss = sum_t CE + gamma ||theta||^2 + lam sum_t sum_r ||a_t[S_r]||_2 "
    "over N x N blocks of side floor(K/N) (Eq. 10-11), or overlapping blocks with a stride (Table 4)",
    aggregation="vote", attention=True, sampling="segments")
