"""CHAM (Yan et al. 2017): the hierarchical Conv-Attention model.

The first ConvLSTM attention layer runs on every frame; a second ConvLSTM layer runs on every
k-th output of the first. Each first-layer step is paired with the latest second-layer output,
the pair is flattened into one fully connected layer, and its scores are averaged over time
before the softmax. CHAM's loss is per step (Eq. 9): by default every step's scores are returned and
trained on (``per_step``); ``per_step=False`` averages them over time into one clip score first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glimpse.train.models.base import ModelOutput, ModelSpec, check_streams
from glimpse.train.models.convattn import (
    CHAM_PAPER,
    CHAM_SCHEDULE,
    CHAM_SOURCES,
    ConvAttentionConfig,
    ConvAttentionLSTM,
    ConvLSTM,
)


@dataclass(frozen=True)
class CHAMConfig(ConvAttentionConfig):
    """Conv-Attention defaults plus ``skip`` k = 2 for the second layer and dropout 0.5 before the classifier;
    ``per_step`` trains each step's scores (Eq. 9), False the time-averaged clip score."""

    skip: int = 2
    per_step: bool = True


class CHAM(nn.Module):
    """Two-level Conv-Attention LSTM; per-step logits (Eq. 9), or per-clip averaged over time."""

    def __init__(self, config: CHAMConfig) -> None:
        super().__init__()
        if config.skip < 1:
            raise ValueError(f"cham: skip must be >= 1, got {config.skip}")
        self.config = config
        self.first = ConvAttentionLSTM(config.channels, config.hidden, config.kernel)
        self.second = ConvLSTM(config.hidden, config.hidden, config.kernel)
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(2 * config.hidden * config.size * config.size, config.classes)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> logits (B, T or 1, classes) and first-layer attention (B, T, K, K)."""
        _, T = check_streams("cham", self.config, cubes, 1)
        k = self.config.skip
        first, attention = self.first(cubes[0])  # (B, T, H, K, K), (B, T, K, K)
        second = self.second(first[:, ::k])  # (B, ceil(T/k), H, K, K), second layer on every k-th output
        second = second.repeat_interleave(k, dim=1)[:, :T]  # (B, T, H, K, K), held over the k steps it covers
        both = torch.cat([first, second], dim=2).flatten(2)  # (B, T, 2H*K*K)
        logits = self.classify(self.drop(both))  # (B, T, classes), every step scored (Eq. 9)
        if not self.config.per_step:
            logits = logits.mean(1, keepdim=True)  # (B, 1, classes), averaged over time
        return ModelOutput(logits, attention)


CHAM_SPEC = ModelSpec(
    "cham", CHAM, CHAMConfig, CHAM_PAPER,
    "layer 1: Conv-Attention LSTM on every frame (Eq. 7-8); layer 2: ConvLSTM on every k-th layer-1 output; "
    "y_t = softmax(W [H1_t; H2_t]) with dropout 0.5 before W; cross-entropy per step (Eq. 9); per_step=False: "
    "softmax(mean_t W [H1_t; H2_t]), cross-entropy per clip",
    frames=60, skip=2, attention=True, batch_size=64, sampling="random", standardize="rms", sources=CHAM_SOURCES,
    **CHAM_SCHEDULE)
