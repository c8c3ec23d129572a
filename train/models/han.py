"""HAN (Wang et al. 2016): two-stream hierarchical LSTMs with one joint spatial attention.

Each stream (RGB cube P_t, flow cube Q_t) is a two-layer hierarchical LSTM whose second layer runs
on every k-th output of the first. One attention over the K*K positions, computed from the
concatenated first-layer hidden states of all streams at t-1 (Eq. 3), reads every stream (Eq. 4).
The final hidden states of all layers of all streams are concatenated into the softmax classifier.
The ablations are the same module: ``attend=False`` average-pools the cubes, and ``streams``
keeps the RGB stream (spatial) or the flow stream (temporal) alone. The flow stream is the store's ``flow_stack``
(stacked flow through a 2L-channel network, HAN's temporal CNN) when it has one, else ``flow_cnn``
(:func:`glimpse.train.setup.temporal_stream`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glimpse.train.models.base import ModelConfig, ModelOutput, ModelSpec, attend, check_streams, positions

PAPER = ("Wang, Wang, Tang, O'Hare, Chang & Li 2016, Hierarchical Attention Network for Action Recognition in "
         "Videos (arXiv:1607.06416)")


@dataclass(frozen=True)
class HANConfig(ModelConfig):
    """HAN: ``hidden`` units per LSTM (1,024 as the paper), second layer every ``skip`` = k steps, ``streams``
    in forward order."""

    hidden: int = 1024
    skip: int = 2
    streams: tuple[str, ...] = ("rgb", "flow_cnn")
    attend: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", tuple(self.streams))  # a config read back from JSON holds a list


@dataclass(frozen=True)
class HANNoAttnConfig(HANConfig):
    """HAN ablation: cubes average-pooled over positions instead of attended."""

    attend: bool = False


@dataclass(frozen=True)
class HANSpatialConfig(HANConfig):
    """HAN ablation: the RGB (spatial) stream alone."""

    streams: tuple[str, ...] = ("rgb",)


@dataclass(frozen=True)
class HANTemporalConfig(HANConfig):
    """HAN ablation: the optical-flow (temporal) stream alone."""

    streams: tuple[str, ...] = ("flow_cnn",)


class HAN(nn.Module):
    """Hierarchical Attention Network over ``len(config.streams)`` streams; per-clip logits."""

    def __init__(self, config: HANConfig) -> None:
        super().__init__()
        if config.skip < 1 or not config.streams:
            raise ValueError(f"han: need skip >= 1 and at least one stream, got {config.skip}, {config.streams}")
        self.config = config
        S, C, H = len(config.streams), config.channels, config.hidden
        if config.attend:  # inputs depend on the previous step: cells stepped one at a time
            self.first = nn.ModuleList(nn.LSTMCell(C, H) for _ in range(S))
        else:  # inputs known in advance: nn.LSTM projects them all at once
            self.first = nn.ModuleList(nn.LSTM(C, H, batch_first=True) for _ in range(S))
        self.second = nn.ModuleList(nn.LSTM(H, H, batch_first=True) for _ in range(S))
        self.locate = nn.Linear(S * H, config.size * config.size) if config.attend else None  # Eq. 3
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(2 * S * H, config.classes)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """Streams in ``config.streams`` order, each (B, T, C, K, K) -> per-clip logits (B, 1, classes)."""
        cfg = self.config
        B, T = check_streams(f"han ({', '.join(cfg.streams)})", cfg, cubes, len(cfg.streams))
        X = [positions(cube) for cube in cubes]  # S x (B, T, P, C)
        attention = None
        if self.locate is None:
            pooled = [self.drop(x.mean(2)) for x in X]  # S x (B, T, C), all steps at once
            firsts = [lstm(x)[0] for lstm, x in zip(self.first, pooled, strict=True)]  # S x (B, T, H)
        else:
            states = [None] * len(X)
            outs, maps = [[] for _ in X], []
            for t in range(T):
                if states[0] is None:
                    hidden = torch.zeros(B, len(X) * cfg.hidden, device=X[0].device, dtype=X[0].dtype)
                else:
                    hidden = torch.cat([h for h, _ in states], dim=-1)  # (B, S*H), every stream's h1_{t-1}
                a_t = torch.softmax(self.locate(hidden), dim=-1)  # (B, P), Eq. 3: one map for all streams
                for s, (cell, x) in enumerate(zip(self.first, X, strict=True)):
                    x_t = attend(a_t, x[:, t])  # (B, C), Eq. 4
                    states[s] = cell(self.drop(x_t), states[s])  # (h, c), (B, H) each
                    outs[s].append(states[s][0])
                maps.append(a_t)
            firsts = [torch.stack(o, 1) for o in outs]  # S x (B, T, H)
            attention = torch.stack(maps, 1).view(B, T, cfg.size, cfg.size)  # (B, T, K, K)
        finals = []
        for lstm, first in zip(self.second, firsts, strict=True):
            _, (h2, _) = lstm(self.drop(first[:, :: cfg.skip]))  # second layer on every k-th output, all at once
            finals += [first[:, -1], h2[-1]]  # (B, H) each: final states of both layers
        logits = self.classify(self.drop(torch.cat(finals, dim=-1))).unsqueeze(1)  # (B, 1, classes)
        return ModelOutput(logits, attention)


EQUATIONS = ("a_t = softmax(W [h1^P_{t-1}; h1^Q_{t-1}] + b) over K^2 positions (Eq. 3); x^P_t = sum_i a_t,i P_t,i, "
             "x^Q_t = sum_i a_t,i Q_t,i (Eq. 4); per stream LSTM layer 1 on every frame, layer 2 on every k-th "
             "layer-1 output; y = softmax(W [h1^P_T; h2^P; h1^Q_T; h2^Q]); cross-entropy per clip")
HAN_SPEC = ModelSpec("han", HAN, HANConfig, PAPER, EQUATIONS, streams=("rgb", "flow_cnn"), skip=2,
                     optimizer="adadelta", lr=1.0, logits="clip", attention=True, batch_size=128, sampling="spread")
HAN_NOATTN = ModelSpec("han_noattn", HAN, HANNoAttnConfig, PAPER + ", ablation without attention",
                       "as han with x_t = 1/K^2 sum_i P_t,i (and Q_t): cubes average-pooled, no Eq. 3-4",
                       streams=("rgb", "flow_cnn"), skip=2, optimizer="adadelta", lr=1.0, logits="clip",
                       batch_size=128, sampling="spread")
HAN_SPATIAL = ModelSpec("han_spatial", HAN, HANSpatialConfig, PAPER + ", spatial (RGB) stream alone",
                        "as han on the RGB stream only: a_t = softmax(W h1^P_{t-1} + b)", streams=("rgb",), skip=2,
                        optimizer="adadelta", lr=1.0, logits="clip", attention=True, batch_size=128, sampling="spread")
HAN_TEMPORAL = ModelSpec("han_temporal", HAN, HANTemporalConfig, PAPER + ", temporal (flow) stream alone",
                         "as han on the flow stream only: a_t = softmax(W h1^Q_{t-1} + b)", streams=("flow_cnn",),
                         skip=2, optimizer="adadelta", lr=1.0, logits="clip", attention=True,
                         batch_size=128, sampling="spread")
