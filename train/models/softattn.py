"""Sharma, Kiros & Salakhutdinov 2015, "Action Recognition using Visual Attention", and its baselines.

`softattn`: a location softmax over the K*K positions from the top LSTM's previous hidden state
(Eq. 1) reads x_t = sum_i l_t,i X_t,i (Eq. 2) into a stack of LSTMs whose c_0, h_0 come from two
MLPs of the video's mean feature (Eq. 6); every step predicts the class through a tanh layer.
`avgpool_lstm` / `maxpool_lstm` feed the same stack the spatial average / maximum of X_t, and
`softmax` is the paper's softmax regression on the full K x K x D cube of each frame.
`softattn_code` is the model of the authors' released code (kracwarlock/action-recognition-visual-attention,
src/actrec.py, the model behind Table 1): the location softmax reads the current frame and h_{t-1},
l_t = softmax(U tanh(Wc X_t,i + Wd h_{t-1} + b)), one LSTM layer, h_0 and c_0 each one tanh layer of the mean
feature, and no attention penalty (its UCF-11 script sets alpha_c = 0). It is initialised as the code initialises
(:func:`released_code_init`), trains with the code's fixed Adam rate 2e-4 for its 15 epochs, adds its decay_c to the
batch-summed loss, and is tested as the code tests: every window at stride 1, each window voting the argmax of its
last ``last_n`` steps' summed softmax, the video labelled by the mode of the votes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glimpse.train.losses import doubly_stochastic
from glimpse.train.models.base import (
    LSTMStack,
    ModelConfig,
    ModelOutput,
    ModelSpec,
    Preset,
    attend,
    check_streams,
    positions,
)

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
class StackConfig(ModelConfig):
    """Sharma's LSTM stack: 3 layers, hidden 512 (UCF-11; 1024 for HMDB-51 in the original code)."""

    hidden: int = 512
    layers: int = 3


@dataclass(frozen=True)
class PooledConfig(StackConfig):
    """The stack fed the spatial ``pool`` ("avg" or "max") of the cube: no attention, no penalty."""

    pool: str = "avg"


@dataclass(frozen=True)
class MaxPooledConfig(PooledConfig):
    """The stack fed the spatial maximum of the cube."""

    pool: str = "max"


@dataclass(frozen=True)
class SoftAttentionConfig(StackConfig):
    """Soft attention with the doubly stochastic penalty weight ``lam`` = 1 (Sharma's lambda)."""

    lam: float = 1.0


class SharmaLSTM(nn.Module):
    """What Sharma's models share: c_0, h_0 from MLPs of the mean feature (Eq. 6) and the tanh classifier."""

    def __init__(self, config: StackConfig) -> None:
        super().__init__()
        self.config = config
        C, H, L = config.channels, config.hidden, config.layers
        self.init_c = nn.Sequential(nn.Linear(C, H), nn.Tanh(), nn.Linear(H, L * H))  # f_init,c (Eq. 6)
        self.init_h = nn.Sequential(nn.Linear(C, H), nn.Tanh(), nn.Linear(H, L * H))  # f_init,h (Eq. 6)
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Dropout(config.dropout),
                                      nn.Linear(H, config.classes))

    def initial_state(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, P, C) positions -> h_0, c_0, each (B, layers, hidden), from the mean over time and space."""
        mean = X.mean((1, 2))  # (B, C)
        shape = (X.shape[0], self.config.layers, self.config.hidden)
        return torch.tanh(self.init_h(mean)).view(shape), self.init_c(mean).view(shape)  # (B, L, H) each


class PooledLSTM(SharmaLSTM):
    """Sharma's stack fed the spatial average or maximum of each frame's cube."""

    def __init__(self, config: PooledConfig) -> None:
        super().__init__(config)
        if config.pool not in ("avg", "max"):
            raise ValueError(f"pooled LSTM: pool must be 'avg' or 'max', got {config.pool!r}")
        L = config.layers
        self.lstm = nn.LSTM(config.channels, config.hidden, L, batch_first=True, dropout=config.dropout * (L > 1))

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-step logits (B, T, classes)."""
        check_streams(f"{self.config.pool}pool_lstm", self.config, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        h0, c0 = self.initial_state(X)  # (B, L, H) each
        x = X.mean(2) if self.config.pool == "avg" else X.amax(2)  # (B, T, C), all steps at once
        out, _ = self.lstm(self.drop(x), (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()))
        return ModelOutput(self.classify(out))  # (B, T, classes)


class SoftAttention(SharmaLSTM):
    """Sharma's soft-attention model: location softmax from the top layer's h_{t-1} reads the cube."""

    def __init__(self, config: SoftAttentionConfig) -> None:
        super().__init__(config)
        self.locate = nn.Linear(config.hidden, config.size * config.size)  # W (Eq. 1)
        self.stack = LSTMStack(config.channels, config.hidden, config.layers, config.dropout)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-step logits (B, T, classes) and attention (B, T, K, K)."""
        cfg = self.config
        B, T = check_streams("softattn", cfg, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        h0, c0 = self.initial_state(X)  # (B, L, H) each
        state = list(zip(h0.unbind(1), c0.unbind(1), strict=True))  # L x ((B, H), (B, H))
        outs, maps = [], []
        for t in range(T):
            l_t = torch.softmax(self.locate(state[-1][0]), dim=-1)  # (B, P), Eq. 1 from the top layer's h_{t-1}
            x_t = attend(l_t, X[:, t])  # (B, C), Eq. 2
            state = self.stack.step(self.drop(x_t), state)
            outs.append(state[-1][0])
            maps.append(l_t)
        logits = self.classify(torch.stack(outs, 1))  # (B, T, classes), all steps at once
        attention = torch.stack(maps, 1).view(B, T, cfg.size, cfg.size)  # (B, T, K, K)
        return ModelOutput(logits, attention, {"doubly_stochastic": cfg.lam * doubly_stochastic(attention)})


@dataclass(frozen=True)
class SoftAttentionCodeConfig(StackConfig):
    """The released code's UCF-11 settings: one LSTM layer of 512, attention of ``att_dim`` (None: the cube's
    channels, as the code's dimctx), penalty weight ``lam`` 0 (alpha_c = 0) and dropout on. ``temperature``
    divides the scores before the location softmax (1, the code's; below 1 sharpens the maps). ``init`` is where
    h_0 and c_0 come from: "mean" (the code's, from the clip's mean feature) or "zero" (the LSTM starts blank, so
    the class must be read through the attended cells). ``att_layers`` is the code's n_layers_att: the projected
    context goes through that many layers before the state is added (1: just Wc). ``last_n`` is how many of a clip's
    last steps vote at test (the code's last_n; 0: all). ``weight_init`` "code" draws every weight as the code does
    (:func:`released_code_init`), "torch" keeps PyTorch's defaults."""

    layers: int = 1
    att_dim: int | None = None
    att_layers: int = 1
    lam: float = 0.0
    temperature: float = 1.0
    init: str = "mean"
    last_n: int = 30
    weight_init: str = "code"


def released_code_init(module: nn.Module, gaussian: tuple[str, ...] = ()) -> None:
    """Initialise ``module``'s weights as the released code's norm_weight / ortho_weight do (src/actrec.py): every
    square matrix orthogonal, every other one and those named in ``gaussian`` N(0, 0.01^2), each LSTM gate's block
    on its own (the recurrent ones orthogonal), every bias zero."""
    for name, param in module.named_parameters():
        if param.dim() < 2:
            nn.init.zeros_(param)
            continue
        blocks = param.data.chunk(4, 0) if "weight_ih" in name or "weight_hh" in name else (param.data,)
        for block in blocks:  # (out, in) each
            if block.shape[0] == block.shape[1] and name not in gaussian:
                nn.init.orthogonal_(block)
            else:
                nn.init.normal_(block, std=0.01)


class SoftAttentionCode(nn.Module):
    """Content-dependent soft attention: l_t,i = softmax_i(U tanh(Wc X_t,i + Wd h_{t-1} + b)), one LSTM."""

    def __init__(self, config: SoftAttentionCodeConfig) -> None:
        super().__init__()
        if not config.temperature > 0:
            raise ValueError(f"softattn_code: temperature must be > 0, got {config.temperature}")
        if config.init not in ("mean", "zero"):
            raise ValueError(f"softattn_code: init must be 'mean' or 'zero', got {config.init!r}")
        if config.weight_init not in ("code", "torch") or config.att_layers < 1 or config.last_n < 0:
            raise ValueError(f"softattn_code: weight_init must be 'code' or 'torch', att_layers >= 1 and last_n >= 0, "
                             f"got {config.weight_init!r}, {config.att_layers}, {config.last_n}")
        self.config = config
        C, H, A = config.channels, config.hidden, config.att_dim or config.channels
        self.init_h = nn.Linear(C, config.layers * H)  # h_0 = tanh(W mean + b) (ff_state)
        self.init_c = nn.Linear(C, config.layers * H)  # c_0 = tanh(W mean + b) (ff_memory)
        self.from_input = nn.Linear(C, A)  # Wc, b (Wc_att, b_att)
        self.deeper = nn.ModuleList(nn.Linear(A, A) for _ in range(config.att_layers - 1))  # W_att_l, b_att_l
        self.from_state = nn.Linear(H, A, bias=False)  # Wd (Wd_att)
        self.score = nn.Linear(A, 1, bias=False)  # U (U_att); its bias c_tt cancels in the softmax
        self.stack = LSTMStack(C, H, config.layers, config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.classify = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Dropout(config.dropout),
                                      nn.Linear(H, config.classes))  # ff_logit_lstm, tanh, dropout, ff_logit
        if config.weight_init == "code":
            released_code_init(self, gaussian=("from_input.weight",))  # Wc_att: norm_weight(ortho=False)

    def forward(self, *cubes: Tensor) -> ModelOutput:
        """(B, T, C, K, K) -> per-step logits (B, T, classes) and attention (B, T, K, K)."""
        cfg = self.config
        B, T = check_streams("softattn_code", cfg, cubes, 1)
        X = positions(cubes[0])  # (B, T, P, C)
        shape = (B, cfg.layers, cfg.hidden)
        if cfg.init == "mean":
            mean = X.mean((1, 2))  # (B, C)
            h0, c0 = torch.tanh(self.init_h(mean)).view(shape), torch.tanh(self.init_c(mean)).view(shape)  # (B, L, H)
        else:
            h0 = c0 = X.new_zeros(shape)  # (B, L, H)
        state = list(zip(h0.unbind(1), c0.unbind(1), strict=True))  # L x ((B, H), (B, H))
        from_input = self.from_input(X)  # (B, T, P, A), Wc X_t,i + b for every step at once
        for i, layer in enumerate(self.deeper):  # n_layers_att > 1: tanh between the deeper layers, not after the last
            from_input = layer(from_input)
            from_input = torch.tanh(from_input) if i < len(self.deeper) - 1 else from_input
        outs, maps = [], []
        for t in range(T):
            pre = torch.tanh(from_input[:, t] + self.from_state(state[-1][0])[:, None])  # (B, P, A)
            l_t = torch.softmax(self.score(pre).squeeze(-1) / cfg.temperature, dim=-1)  # (B, P)
            state = self.stack.step(attend(l_t, X[:, t]), state)  # the code feeds the context undropped
            outs.append(state[-1][0])
            maps.append(l_t)
        logits = self.classify(self.drop(torch.stack(outs, 1)))  # (B, T, classes), dropout on h as the code
        attention = torch.stack(maps, 1).view(B, T, cfg.size, cfg.size)  # (B, T, K, K)
        aux = {"doubly_stochastic": cfg.lam * doubly_stochastic(attention)} if cfg.lam else {}
        return ModelOutput(logits, attention, aux)


#: where the paper models' protocol values come from (`python -m glimpse.train models`)
SHARMA_SOURCES = {"shuffle": "released code: every window of every video shuffled",
                  "weight decay": "released code: decay_c 1e-5; the paper names gamma without a value"}
SOFTMAX = ModelSpec(
    "softmax", SoftmaxRegression, SoftmaxConfig, PAPER + ", softmax regression baseline",
    "logits_t = W vec(X_t) + b on the full K x K x D cube; cross-entropy per step",
    batch_size=128, sources=SHARMA_SOURCES)
AVGPOOL_LSTM = ModelSpec(
    "avgpool_lstm", PooledLSTM, PooledConfig, PAPER + ", average-pooling baseline",
    "x_t = 1/K^2 sum_i X_t,i into the soft-attention LSTM stack (Eq. 3-6); cross-entropy per step",
    batch_size=128, sources=SHARMA_SOURCES)
MAXPOOL_LSTM = ModelSpec(
    "maxpool_lstm", PooledLSTM, MaxPooledConfig, PAPER + ", max-pooling baseline",
    "x_t = max_i X_t,i into the soft-attention LSTM stack (Eq. 3-6); cross-entropy per step",
    batch_size=128, sources=SHARMA_SOURCES)
SOFTATTN = ModelSpec(
    "softattn", SoftAttention, SoftAttentionConfig, PAPER,
    "l_t = softmax(W h_{t-1}) (Eq. 1); x_t = sum_i l_t,i X_t,i (Eq. 2); stacked LSTM (Eq. 3-5); c_0, h_0 = "
    "MLP(mean_t,i X_t,i) (Eq. 6); y_t = softmax(U tanh(V h_t)); loss = sum_t CE + lam sum_i (1 - sum_t l_t,i)^2 "
    "+ weight_decay ||theta||^2", attention=True, batch_size=128, sources=SHARMA_SOURCES)
#: the other scripts of the released code (scripts/evaluate_hmdb51gln.py, scripts/evaluate_mAP.py). Their plain SGD
#: steps on the loss summed over the batch, ours on its mean: the rate is the script's times its batch of 128.
CODE_PRESETS = (
    Preset("hmdb51", "scripts/evaluate_hmdb51gln.py: n_layers_att 3, dim 1024, sgd at 1e-5 x 128, last_n 16",
           {"att_layers": 3, "hidden": 1024, "last_n": 16}, "sgd", 1e-5 * 128, 0.0),
    Preset("hollywood2", "scripts/evaluate_mAP.py: n_layers_att 1, dim 512, sgd at 1e-4 x 128, last_n 16 (its "
           "score: the mean softmax of the last 16 steps)", {"att_layers": 1, "hidden": 512, "last_n": 16}, "sgd",
           1e-4 * 128, 0.0),
)
SOFTATTN_CODE = ModelSpec(
    "softattn_code", SoftAttentionCode, SoftAttentionCodeConfig,
    PAPER + ", as the authors' released code (its UCF-11 script) runs it: one LSTM layer where the paper describes "
    "three; which of the two produced Table 1 is not stated",
    "l_t,i = softmax_i(U tanh(Wc X_t,i + Wd h_{t-1} + b)) (src/actrec.py, not Eq. 1); x_t = sum_i l_t,i X_t,i; one "
    "LSTM; h_0 = tanh(W_h mean X + b_h), c_0 = tanh(W_c mean X + b_c); y_t = softmax(U tanh(V h_t)); "
    "loss = sum_t CE + lam doubly stochastic (lam = alpha_c = 0 in its UCF-11 script) + weight_decay ||theta||^2",
    attention=True, batch_size=128, variant="released code", lr=2e-4, epochs=15, sampling="all_windows",
    aggregation="released_vote", decay="batch sum", presets=CODE_PRESETS, patience=0,
    sources={"length": "released code: max_epochs 15", "validation": "released code: no early stop (its patience is "
             "unused), the weights of the best validation accuracy kept; it validates every 100 updates and at each "
             "epoch's end, we at each epoch's end, on our 0.15 share", "shuffle": "released code",
             "weight decay": "released code: decay_c"})
