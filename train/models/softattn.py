"""Sharma, Kiros & Salakhutdinov 2015, "Action Recognition using Visual Attention", and its baselines.

`softattn`: a location softmax over the K*K positions from the top LSTM's previous hidden state
(Eq. 1) reads x_t = sum_i l_t,i X_t,i (Eq. 2) into a stack of LSTMs whose c_0, h_0 come from two
MLPs of the video's mean feature (Eq. 6); every step predicts the class through a tanh layer.
`avgpool_lstm` / `maxpool_lstm` feed the same stack the spatial average / maximum of X_t, and
`softmax` is the paper's softmax regression on the full K x K x D cube of each frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from train.losses import doubly_stochastic
from train.models.base import ModelConfig, ModelOutput, ModelSpec, attend, check_streams, positions

POOLS = {"attention": "softattn", "avg": "avgpool_lstm", "max": "maxpool_lstm"}  # config.pool -> model name
PAPER = "Sharma, Kiros & Salakhutdinov 2015, Action Recognition using Visual Attention (arXiv:1511.04119)"


@dataclass(frozen=True)
class SoftmaxConfig(ModelConfig):
    """Softmax regression on the flattened cube; dropout on its input."""


class SoftmaxRegression(nn.Module):
    """Per-frame softmax regression on the K x K x D cube: logits_t = W vec(X_t) + b."""

    def __init__(self, config: SoftmaxConfig) -> None:
        super().__init__()
        self.config = config
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(config.channels * config.size * config.size, config.classes)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-step logits (B, T, classes)."""
        check_streams("softmax", self.config, cubes, 1)
        logits = self.classify(self.drop(cubes[0].flatten(2)))  # (B, T, classes), all steps at once
        return ModelOutput(logits)


@dataclass(frozen=True)
class SoftAttentionConfig(ModelConfig):
    """Sharma's defaults: 3 LSTM layers, hidden 512 (UCF-11; 1024 for HMDB-51), lambda = 1.

    ``pool`` is how x_t is read from the cube: "attention" (Eq. 1-2), "avg" or "max".
    """

    hidden: int = 512
    layers: int = 3
    lam: float = 1.0
    pool: str = "attention"


@dataclass(frozen=True)
class AvgPoolConfig(SoftAttentionConfig):
    """The soft-attention stack fed the spatial average of the cube (no attention, no penalty)."""

    lam: float = 0.0
    pool: str = "avg"


@dataclass(frozen=True)
class MaxPoolConfig(SoftAttentionConfig):
    """The soft-attention stack fed the spatial maximum of the cube (no attention, no penalty)."""

    lam: float = 0.0
    pool: str = "max"


class SoftAttention(nn.Module):
    """Sharma's stacked-LSTM soft-attention model, or its pooled baselines (see ``config.pool``)."""

    def __init__(self, config: SoftAttentionConfig) -> None:
        super().__init__()
        if config.pool not in POOLS:
            raise ValueError(f"softattn: pool must be one of {tuple(POOLS)}, got {config.pool!r}")
        self.config = config
        self.name = POOLS[config.pool]
        C, H, L = config.channels, config.hidden, config.layers
        self.init_c = nn.Sequential(nn.Linear(C, H), nn.Tanh(), nn.Linear(H, L * H))  # f_init,c (Eq. 6)
        self.init_h = nn.Sequential(nn.Linear(C, H), nn.Tanh(), nn.Linear(H, L * H))  # f_init,h (Eq. 6)
        self.locate = nn.Linear(H, config.size * config.size) if config.pool == "attention" else None  # W (Eq. 1)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(C, H, num_layers=L, batch_first=True, dropout=config.dropout if L > 1 else 0.0)
        self.classify = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Dropout(config.dropout),
                                      nn.Linear(H, config.classes))

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-step logits (B, T, classes), attention (B, T, K, K) when attending."""
        cfg = self.config
        B, T = check_streams(self.name, cfg, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        mean = X.mean((1, 2))  # (B, C), the video's mean feature over time and space
        c = self.init_c(mean).view(B, cfg.layers, cfg.hidden).transpose(0, 1).contiguous()  # (L, B, H)
        h = torch.tanh(self.init_h(mean)).view(B, cfg.layers, cfg.hidden).transpose(0, 1).contiguous()  # (L, B, H)
        if self.locate is None:
            x = X.mean(2) if cfg.pool == "avg" else X.amax(2)  # (B, T, C), all steps at once
            out, _ = self.lstm(self.drop(x), (h, c))  # (B, T, H)
            return ModelOutput(self.classify(out))
        outs, maps = [], []
        for t in range(T):
            l_t = torch.softmax(self.locate(h[-1]), dim=-1)  # (B, P), Eq. 1 from the top layer's h_{t-1}
            x_t = attend(l_t, X[:, t])  # (B, C), Eq. 2
            out, (h, c) = self.lstm(self.drop(x_t).unsqueeze(1), (h, c))  # (B, 1, H), one step of the stack
            outs.append(out[:, 0])
            maps.append(l_t)
        logits = self.classify(torch.stack(outs, 1))  # (B, T, classes), all steps at once
        attention = torch.stack(maps, 1).view(B, T, cfg.size, cfg.size)  # (B, T, K, K)
        return ModelOutput(logits, attention, {"doubly_stochastic": cfg.lam * doubly_stochastic(attention)})


SOFTMAX = ModelSpec(
    "softmax", SoftmaxRegression, SoftmaxConfig, PAPER + ", softmax regression baseline",
    "logits_t = W vec(X_t) + b on the full K x K x D cube; cross-entropy per step")
AVGPOOL_LSTM = ModelSpec(
    "avgpool_lstm", SoftAttention, AvgPoolConfig, PAPER + ", average-pooling baseline",
    "x_t = 1/K^2 sum_i X_t,i into the soft-attention LSTM stack (Eq. 3-6); cross-entropy per step")
MAXPOOL_LSTM = ModelSpec(
    "maxpool_lstm", SoftAttention, MaxPoolConfig, PAPER + ", max-pooling baseline",
    "x_t = max_i X_t,i into the soft-attention LSTM stack (Eq. 3-6); cross-entropy per step")
SOFTATTN = ModelSpec(
    "softattn", SoftAttention, SoftAttentionConfig, PAPER,
    "l_t = softmax(W h_{t-1}) (Eq. 1); x_t = sum_i l_t,i X_t,i (Eq. 2); stacked LSTM (Eq. 3-5); c_0, h_0 = "
    "MLP(mean_t,i X_t,i) (Eq. 6); y_t = softmax(U tanh(V h_t)); loss = sum_t CE + lam sum_i (1 - sum_t l_t,i)^2 "
    "+ weight_decay ||theta||^2", attention=True)
