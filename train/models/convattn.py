"""Conv-Attention: a ConvLSTM whose attention map re-weights the cube in place.

CHAM's Conv-Attention layer (Yan et al. 2017; the ConvLSTM report's model is convlstm_report): the map is
softmax over the K*K positions of W_z * tanh(W_ha * H_{t-1} + W_xa * X_t + b) with 1x1
convolutions (Eq. 8); the cube keeps its spatial layout and is multiplied by the map (Eq. 7),
then enters a ConvLSTM with 3x3 input-to-state and state-to-state convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glimpse.train.models.base import ModelConfig, ModelOutput, ModelSpec, check_streams

CHAM_PAPER = ("Yan, Smith, Lu & Zhang 2017, CHAM: Action recognition using convolutional hierarchical attention "
              "model (ICIP 2017, arXiv:1705.03146)")
PAPER = CHAM_PAPER + ", Conv-Attention baseline"
#: Sec. 3.2: 10,000 iterations at 1e-4, then 1e-5; the paper does not say for how long. We train a further 5,000
#: (half again), counted as iterations with no early stopping.
CHAM_STEPS = 15_000
#: the smallest training set the paper ran that budget on: UCF Sports' 103 training videos (its standard split)
CHAM_VIDEOS = 103
#: CHAM's training schedule as ModelSpec fields, shared by cham and by convattn, which CHAM trained its baselines
#: with (train.config.budget_steps turns them into a run's steps, scaled on small stores)
CHAM_SCHEDULE = {"steps": CHAM_STEPS, "steps_videos": CHAM_VIDEOS, "lr_drop_step": 10_000, "lr_drop_to": 1e-5,
                 "patience": 0}
#: where cham's and convattn's protocol values come from (`python -m glimpse.train models`)
CHAM_SOURCES = {"length": "paper: 10,000 iterations then 1e-5; the further 5,000 are ours",
                "shuffle": "paper: random clips, batch 64", "standardization": "ours: Eq. 7 keeps zero"}


@dataclass(frozen=True)
class ConvAttentionConfig(ModelConfig):
    """ConvLSTM with ``hidden`` state channels (512) and ``kernel`` x ``kernel`` convolutions (3).

    The attention's 1x1 convolutions W_xa, W_ha also have ``hidden`` channels.
    """

    hidden: int = 512
    kernel: int = 3


class ConvLSTM(nn.Module):
    """ConvLSTM: gates = W_x * x_t + W_h * H_{t-1} + b with ``kernel`` x ``kernel`` convolutions."""

    def __init__(self, channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"ConvLSTM: kernel must be odd to keep the K x K grid, got {kernel}")
        self.hidden = hidden
        self.input = nn.Conv2d(channels, 4 * hidden, kernel, padding=kernel // 2)  # W_x, b
        self.state = nn.Conv2d(hidden, 4 * hidden, kernel, padding=kernel // 2, bias=False)  # W_h

    def step(self, gates_x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """One step from the input's gate pre-activations (B, 4H, K, K) and (H, C) or None -> (H, C)."""
        gates = gates_x if state is None else gates_x + self.state(state[0])  # (B, 4H, K, K)
        i, f, o, g = gates.chunk(4, dim=1)  # 4 x (B, H, K, K)
        c = torch.sigmoid(i) * torch.tanh(g)  # (B, H, K, K)
        if state is not None:
            c = c + torch.sigmoid(f) * state[1]
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, K, K) -> hidden states (B, T, H, K, K); W_x * x_t is one convolution for all t."""
        B, T = x.shape[:2]
        gates_x = self.input(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, 4H, K, K)
        state, outs = None, []
        for t in range(T):
            state = self.step(gates_x[:, t], state)
            outs.append(state[0])
        return torch.stack(outs, 1)  # (B, T, H, K, K)


class ConvAttentionLSTM(nn.Module):
    """A ConvLSTM reading a_t * X_t, with a_t = softmax_positions(W_z * tanh(W_ha * H_{t-1} + W_xa * X_t + b))."""

    def __init__(self, channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.cell = ConvLSTM(channels, hidden, kernel)
        self.from_input = nn.Conv2d(channels, hidden, 1)  # W_xa, b
        self.from_state = nn.Conv2d(hidden, hidden, 1, bias=False)  # W_ha
        self.score = nn.Conv2d(hidden, 1, 1, bias=False)  # W_z; a bias would cancel in the softmax

    def forward(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, C, K, K) -> hidden states (B, T, H, K, K) and attention maps (B, T, K, K)."""
        B, T, _, K, _ = X.shape
        from_input = self.from_input(X.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, H, K, K), all steps at once
        state, outs, maps = None, [], []
        for t in range(T):
            pre = from_input[:, t] if state is None else from_input[:, t] + self.from_state(state[0])  # (B, H, K, K)
            z = self.score(torch.tanh(pre)).flatten(1)  # (B, K*K), Eq. 8
            a = torch.softmax(z, dim=-1).view(B, 1, K, K)  # (B, 1, K, K)
            state = self.cell.step(self.cell.input(a * X[:, t]), state)  # Eq. 7: the re-weighted cube, not pooled
            outs.append(state[0])
            maps.append(a[:, 0])
        return torch.stack(outs, 1), torch.stack(maps, 1)  # (B, T, H, K, K), (B, T, K, K)


class ConvAttention(nn.Module):
    """Conv-Attention LSTM with a per-step classifier on its flattened hidden state."""

    def __init__(self, config: ConvAttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = ConvAttentionLSTM(config.channels, config.hidden, config.kernel)
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Linear(config.hidden * config.size * config.size, config.classes)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-step logits (B, T, classes) and attention (B, T, K, K)."""
        check_streams("convattn", self.config, cubes, 1)
        hidden, attention = self.layer(cubes[0])  # (B, T, H, K, K), (B, T, K, K)
        logits = self.classify(self.drop(hidden.flatten(2)))  # (B, T, classes), all steps at once
        return ModelOutput(logits, attention)


CONVATTN = ModelSpec(
    "convattn", ConvAttention, ConvAttentionConfig, PAPER,
    "a_t = softmax_i(W_z * tanh(W_ha * H_{t-1} + W_xa * X_t + b)) with 1x1 convs (Eq. 8); X~_t = a_t . X_t "
    "element-wise, spatial layout kept (Eq. 7); ConvLSTM with 3x3 W_x, W_h; y_t = softmax(W vec(H_t)); "
    "cross-entropy per step; trained as CHAM trained its baselines: 30 random frames, batch 64, CHAM's schedule",
    attention=True, batch_size=64, sampling="random", frames=30, standardize="rms", sources=CHAM_SOURCES,
    **CHAM_SCHEDULE)
