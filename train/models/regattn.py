"""Attention with structure regularization (Quan, Chen, Xu & Ji 2019).

A two-level LSTM (Eq. 2-6) reads x_t = X_t a_t (Eq. 9), with a_t = softmax(W h2_{t-1}) and a_1
uniform (Eq. 8), and predicts every frame with softmax(tanh(B h2_t)) (Eq. 7). The loss (Eq. 11)
adds lambda times the l2,1 group-sparsity penalty of the maps over N x N blocks (Eq. 10).

Deviations, each a config field: the blocks cover the whole K x K map with sides differing by at most one
cell (``layout="even"``, the default; ``"floor"`` is Eq. 10's side floor(K / N), which on a 7 x 7 map with
N = 4 leaves one-cell blocks and uncovered cells and is then refused); ``penalty="sqrt_mass"`` replaces the
l2,1 norm, which every block-uniform map minimises, the uniform map included, by sum_r sqrt(mass in S_r);
``attention="content"`` is the variant of Sec. 4.4: a 1x1 convolution of X_t to a K x K map, an MLP of it to
a ``hidden``-d vector, concatenated with h2_{t-1} in the attention module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glimpse.train.losses import PENALTIES, block_layout, block_sparsity, default_blocks, group_sparsity
from glimpse.train.models.base import LSTMStack, ModelConfig, ModelOutput, ModelSpec, attend, check_streams, positions

PAPER = ("Quan, Chen, Xu & Ji 2019, Attention with structure regularization for action recognition "
         "(CVIU 187, doi:10.1016/j.cviu.2019.102794)")


@dataclass(frozen=True)
class RegAttentionConfig(ModelConfig):
    """The paper's defaults: lambda = 1e-4, gamma = 1e-5, hidden 512, dropout 0.5, N = 4 blocks per side.

    ``blocks`` None means N = 4 where the map allows 2 x 2 blocks (K >= 8, as the paper's 8 x 8 maps), else
    floor(K / 2). ``layout`` "even" or "floor" and ``stride`` (overlapping blocks, Table 4) place them, see
    train.losses.block_layout; ``penalty`` "l21" (Eq. 10) or "sqrt_mass"; ``attention`` "hidden" (Eq. 8) or
    "content" (Sec. 4.4); ``temperature`` divides the attention scores before the softmax (1, the paper's).
    """

    hidden: int = 512
    blocks: int | None = None
    stride: int | None = None
    layout: str = "even"
    penalty: str = "l21"
    attention: str = "hidden"
    lam: float = 1e-4
    weight_decay: float = 1e-5
    temperature: float = 1.0


class RegAttention(nn.Module):
    """Two-level attention LSTM with per-frame predictions and a group-sparsity penalty on its maps."""

    def __init__(self, config: RegAttentionConfig) -> None:
        super().__init__()
        if config.penalty not in PENALTIES or config.attention not in ("hidden", "content"):
            raise ValueError(f"regattn: penalty must be in {PENALTIES} and attention 'hidden' or 'content', got "
                             f"{config.penalty!r}, {config.attention!r}")
        if not config.temperature > 0:
            raise ValueError(f"regattn: temperature must be > 0, got {config.temperature}")
        self.blocks = config.blocks or default_blocks(config.size)
        block_layout(config.size, self.blocks, config.stride, config.layout)  # refuses a geometry that cannot act
        self.config = config
        H, P = config.hidden, config.size * config.size
        self.stack = LSTMStack(config.channels, H, 2, config.dropout)  # the two levels (Eq. 2-6)
        content = config.attention == "content"
        self.locate = nn.Linear(2 * H if content else H, P, bias=False)  # W (Eq. 8), of [h2_{t-1}; v_t] (Sec. 4.4)
        if content:
            self.squeeze = nn.Linear(config.channels, 1)  # the 1x1 convolution of X_t to a K x K map
            self.describe = nn.Sequential(nn.Linear(P, H), nn.Tanh())  # the MLP of that map to a hidden-d vector
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(H, config.classes, bias=False)  # B (Eq. 7)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-frame logits tanh(B h2_t) (B, T, classes) and attention (B, T, K, K)."""
        cfg = self.config
        B, T = check_streams("regattn", cfg, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        P = X.shape[2]
        content = None
        if cfg.attention == "content":
            content = self.describe(self.squeeze(X).squeeze(-1))  # (B, T, H), v_t = MLP(conv1x1(X_t))
        state, outs, maps = None, [], []
        for t in range(T):
            h = X.new_zeros(B, cfg.hidden) if state is None else state[-1][0]  # h2_{t-1}, (B, H)
            if content is not None:
                a_t = torch.softmax(self.locate(torch.cat([h, content[:, t]], -1)) / cfg.temperature, -1)  # (B, P)
            elif t == 0:
                a_t = X.new_full((B, P), 1.0 / P)  # (B, P), a_1 uniform (Eq. 8)
            else:
                a_t = torch.softmax(self.locate(h) / cfg.temperature, dim=-1)  # (B, P), from h2_{t-1} (Eq. 8)
            x_t = attend(a_t, X[:, t])  # (B, C), X_t a_t (Eq. 9)
            state = self.stack.step(self.drop(x_t), state)  # both levels, one step
            outs.append(state[-1][0])  # h2_t, (B, H)
            maps.append(a_t)
        logits = torch.tanh(self.classify(self.drop(torch.stack(outs, 1))))  # (B, T, classes), Eq. 7 as printed
        attention = torch.stack(maps, 1).view(B, T, cfg.size, cfg.size)  # (B, T, K, K)
        if cfg.penalty == "l21":
            penalty = {"group_sparsity": group_sparsity(attention, self.blocks, cfg.stride, cfg.layout)}  # Eq. 10
        else:
            penalty = {"block_sparsity": block_sparsity(attention, self.blocks, cfg.stride, cfg.layout)}
        return ModelOutput(logits, attention, {k: cfg.lam * v for k, v in penalty.items()})  # (B,) each, Eq. 11


REGATTN = ModelSpec(
    "regattn", RegAttention, RegAttentionConfig, PAPER,
    "two-level LSTM (Eq. 2-6); a_1 = 1/K^2, a_t = softmax(W h2_{t-1}) (Eq. 8); x_t = X_t a_t (Eq. 9); "
    "y_t = softmax(tanh(B h2_t)) (Eq. 7); loss = sum_t CE + gamma ||theta||^2 + lam sum_t sum_r ||a_t[S_r]||_2 "
    "over N x N blocks (Eq. 10-11). Defaults: blocks cover the whole map, sides differing by at most one cell "
    "(layout=even; layout=floor is Eq. 10's side floor(K/N), refused where it leaves one-cell blocks or uncovered "
    "cells), N = 4 where K >= 8 else floor(K/2); options penalty=sqrt_mass (sum_r sqrt(mass in S_r), minimised by "
    "one block), attention=content (Sec. 4.4: [h2_{t-1}; MLP(conv1x1(X_t))])",
    aggregation="vote", attention=True, batch_size=256, stride=2, sampling="segments", epochs=10, val_fraction=0.0,
    patience=0, sources={"length": "paper", "validation": "paper: the full training set", "weight decay": "paper"})
