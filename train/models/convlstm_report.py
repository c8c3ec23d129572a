"""The ConvLSTM report (Teja & Akunuri 2020, "Spatio-Temporal Attention for Video Action Recognition", a course
report): soft attention over the K x K grid queried by the frame's channel-wise global average plus the previous
context, feeding a ConvLSTM.

    g_t = 1/K^2 sum_i X_t,i                                  channel-wise global average of the frame's cube (C,)
    a_t,i = softmax_i(w^T tanh(W_x X_t,i + W_q (g_t + z_{t-1}) + b))     z_0 = 0
    z_t = sum_i a_t,i X_t,i                                  the context, the next step's query
    H_t = ConvLSTM(a_t . X_t, H_{t-1})                       the re-weighted cube, spatial layout kept
    y_t = softmax(W mean_i H_t,i)                            per frame

Its protocol: 30 frames equally spaced over each video (the ``spread`` policy), batches of 15, about 10 epochs, and
per-frame accuracy on a 10-class subset of HMDB-51 (``--classes`` at extraction; ``glimpse evaluate`` writes the
frame-level accuracy). The report's text is the source of the equation as worded there; the layer sizes are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glimpse.train.models.base import ModelConfig, ModelOutput, ModelSpec, attend, check_streams, positions
from glimpse.train.models.convattn import ConvLSTM

PAPER = ("Teja & Akunuri 2020, Spatio-Temporal Attention for Video Action Recognition (the ConvLSTM report; "
         "protocol: a 10-class HMDB-51 subset, per-frame accuracy)")


@dataclass(frozen=True)
class ReportConfig(ModelConfig):
    """ConvLSTM of ``hidden`` channels and ``kernel`` x ``kernel`` convolutions; attention of ``att_dim`` units."""

    hidden: int = 256
    kernel: int = 3
    att_dim: int = 256


class ReportAttention(nn.Module):
    """Attention from the frame's global average plus the previous context, into a ConvLSTM; per-frame logits."""

    def __init__(self, config: ReportConfig) -> None:
        super().__init__()
        self.config = config
        self.from_input = nn.Linear(config.channels, config.att_dim)  # W_x, b
        self.from_query = nn.Linear(config.channels, config.att_dim, bias=False)  # W_q
        self.score = nn.Linear(config.att_dim, 1, bias=False)  # w
        self.cell = ConvLSTM(config.channels, config.hidden, config.kernel)
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(config.hidden, config.classes)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-frame logits (B, T, classes) and attention (B, T, K, K)."""
        cfg = self.config
        B, T = check_streams("convlstm_report", cfg, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        from_input = self.from_input(X)  # (B, T, P, A), every step at once
        query = X.mean(2)  # (B, T, C), g_t
        context = X.new_zeros(B, cfg.channels)  # (B, C), z_0
        state, outs, maps = None, [], []
        for t in range(T):
            pre = torch.tanh(from_input[:, t] + self.from_query(query[:, t] + context)[:, None])  # (B, P, A)
            a = torch.softmax(self.score(pre).squeeze(-1), dim=-1)  # (B, P)
            context = attend(a, X[:, t])  # (B, C), z_t
            weighted = cubes[0][:, t] * a.view(B, 1, cfg.size, cfg.size)  # (B, C, K, K)
            state = self.cell.step(self.cell.input(weighted), state)
            outs.append(state[0].mean((2, 3)))  # (B, H), spatial average of H_t
            maps.append(a)
        logits = self.classify(self.drop(torch.stack(outs, 1)))  # (B, T, classes)
        return ModelOutput(logits, torch.stack(maps, 1).view(B, T, cfg.size, cfg.size))


CONVLSTM_REPORT = ModelSpec(
    "convlstm_report", ReportAttention, ReportConfig, PAPER,
    "g_t = mean_i X_t,i; a_t,i = softmax_i(w tanh(W_x X_t,i + W_q (g_t + z_{t-1}) + b)), z_0 = 0; "
    "z_t = sum_i a_t,i X_t,i; H_t = ConvLSTM(a_t . X_t, H_{t-1}); y_t = softmax(W mean_i H_t,i); cross-entropy per "
    "frame", attention=True, sampling="spread", frames=30, batch_size=15, epochs=10, standardize="rms",
    sources={"length": "report: about 10 epochs", "shuffle": "report: 30 equally spaced frames, batch 15",
             "standardization": "ours: the cube is multiplied by the map"})
