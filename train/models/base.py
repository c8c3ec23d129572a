"""What every model shares: its registry entry, its config defaults, its output and input checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from glimpse.train.aggregation import AGGREGATIONS
from glimpse.train.sampling import POLICIES

LOGITS = ("step", "clip")
VARIANTS = ("equations", "released code")
#: what a model's ``weight_decay`` gamma is added to: "per clip" (the mean loss over the batch, as the papers write
#: it) or "batch sum" (Sharma's released code: decay_c ||theta||^2 added to the loss summed over the batch, so per
#: clip it weighs gamma / B)
DECAYS = ("per clip", "batch sum")
#: how a run standardizes each feature channel with training statistics (train/data.py Normalization):
#: "mean_std" (x - mean) / std; "rms" x / sqrt(mean x^2), no mean shift, so a zero feature stays zero and a model
#: whose attention multiplies the cube (CHAM's Eq. 7, x_t = l_t * F_t) keeps "low attention means zero"
STANDARDIZATIONS = ("mean_std", "rms")
#: where a protocol value of `python -m glimpse.train models` comes from; "ours" where no source states it
SOURCES = ("paper", "released code", "report", "ours")
#: the protocol settings `models` prints, each marked by its source (ModelSpec.sources)
PROTOCOL = ("length", "validation", "shuffle", "standardization", "weight decay")


def rate(value: float) -> str:
    """A learning rate as the papers print it: 1e-4, 2e-4, 1.28e-3."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass(frozen=True)
class Preset:
    """A named recipe of one model (``--preset NAME``): model config ``settings`` and the optimizer, learning rate and
    momentum it trains with, e.g. the released code's HMDB-51 script. ``source`` says where each value comes from."""

    name: str
    source: str
    settings: dict = field(default_factory=dict)
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None

    def describe(self) -> str:
        """One line for `python -m glimpse.train models`."""
        recipe = [f"{k}={v!r}" for k, v in self.settings.items()]
        recipe += [f"{k}={getattr(self, k):g}" if isinstance(getattr(self, k), float) else f"{k}={getattr(self, k)}"
                   for k in ("optimizer", "lr", "momentum") if getattr(self, k) is not None]
        return f"  preset:    {self.name}: {' '.join(recipe)} ({self.source})"


@dataclass(frozen=True)
class ModelConfig:
    """Fields every model config has; each family subclasses it with the paper's defaults.

    ``channels`` (D) and ``size`` (K) describe the stored cube, (T, D, K, K) per stream;
    ``weight_decay`` is gamma * ||theta||^2 of the papers, applied by the optimizer, never in aux_losses.
    """

    channels: int = 1024
    size: int = 7
    classes: int = 11
    dropout: float = 0.5
    weight_decay: float = 1e-5


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: how to build a model and what the trainer needs to know about it.

    ``build`` takes the config instance and returns the module. ``streams`` names the store streams
    that ``forward`` takes, in order. ``frames`` is the clip length the paper trains on and ``skip`` the
    temporal skip k of the hierarchical models (every k-th first-layer output feeds the second layer).
    ``aggregation`` says how clip scores become a video score ("mean" over time and clips, "vote" over
    segments). ``logits`` is "step" for (B, T, classes) or "clip" for (B, 1, classes); ``attention``
    says whether the model returns attention maps. ``sampling`` names its paper's clip policy
    (train/sampling.py: windows, segments, random, spread).

    The paper's training recipe lives here too, one place per model (train.config.resolve fills a run's
    None fields from it): ``optimizer`` and ``lr``, ``batch_size`` (the paper's or its released code's),
    ``stride`` (frames between clip starts, d), and the learning-rate drop to ``lr_drop_to`` after
    ``lr_drop_step`` iterations (0: none). ``variant`` says whose model it is: "equations" (the paper's
    equations as printed) or "released code" (what the authors' code ran, where it differs).

    ``epochs`` (None: train.config.DEFAULT_EPOCHS) or ``steps``, an iteration budget that sets the epochs, run on
    at least ``steps_videos`` training videos (a store with fewer scales the budget and the drop by its share);
    ``patience`` the early-stopping default (None: train.config's; 0 never); ``decay`` what ``weight_decay`` is
    added to (:data:`DECAYS`); ``presets`` the named recipes of other scripts of the same code.

    ``val_fraction`` the share of training videos held out for validation (None: train.config's default; 0: the
    full training set, no validation); ``standardize`` how features are standardized (:data:`STANDARDIZATIONS`):
    "rms" for models whose attention multiplies the cube. ``sources`` says, per :data:`PROTOCOL` setting, where its
    value comes from (:data:`SOURCES`; "ours" when left out) and may add a note in words after a colon, e.g.
    ``{"length": "paper", "validation": "released code: best weights kept"}``.
    """

    name: str
    build: Callable[..., nn.Module]
    config: type
    paper: str
    equations: str
    streams: tuple[str, ...] = ("rgb",)
    frames: int = 30
    skip: int = 1
    aggregation: str = "mean"
    optimizer: str = "adam"
    lr: float = 1e-4
    logits: str = "step"
    attention: bool = False
    sampling: str = "windows"
    batch_size: int = 16
    stride: int = 1
    lr_drop_step: int = 0
    lr_drop_to: float = 0.0
    variant: str = "equations"
    epochs: int | None = None
    steps: int = 0
    steps_videos: int = 0
    patience: int | None = None
    decay: str = "per clip"
    presets: tuple[Preset, ...] = ()
    val_fraction: float | None = None
    standardize: str = "mean_std"
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (dataclasses.is_dataclass(self.config) and issubclass(self.config, ModelConfig)):
            raise TypeError(f"model {self.name!r}: config must be a ModelConfig dataclass, got {self.config!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"model {self.name!r}: aggregation must be in {AGGREGATIONS}, got {self.aggregation!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"model {self.name!r}: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"model {self.name!r}: decay must be one of {DECAYS}, got {self.decay!r}")
        if self.standardize not in STANDARDIZATIONS:
            raise ValueError(f"model {self.name!r}: standardize must be one of {STANDARDIZATIONS}, "
                             f"got {self.standardize!r}")
        unknown = sorted(set(self.sources) - set(PROTOCOL))
        wrong = sorted(v for v in self.sources.values() if v.split(":")[0] not in SOURCES)
        if unknown or wrong:
            raise ValueError(f"model {self.name!r}: sources name settings of {PROTOCOL} and sources of {SOURCES}, "
                             f"got {unknown or wrong}")
        if self.logits not in LOGITS:
            raise ValueError(f"model {self.name!r}: logits must be one of {LOGITS}, got {self.logits!r}")
        defaults = self.config()
        if getattr(defaults, "skip", self.skip) != self.skip:
            raise ValueError(f"model {self.name!r}: spec skip={self.skip} but config default skip={defaults.skip}")
        if tuple(getattr(defaults, "streams", self.streams)) != self.streams:
            raise ValueError(f"model {self.name!r}: spec streams={self.streams} but config streams={defaults.streams}")

    def schedule(self) -> str:
        """The learning-rate schedule in words."""
        if not self.lr_drop_step:
            return "constant"
        if self.steps:
            return (f"{self.lr_drop_step:,} iterations at {rate(self.lr)} then {rate(self.lr_drop_to)} for a further "
                    f"{self.steps - self.lr_drop_step:,} ({self.steps:,} in all; on fewer than {self.steps_videos} "
                    "training videos both scale by the store's share)")
        return (f"drop to {self.lr_drop_to:g} after {self.lr_drop_step:,} iterations, or after 2/3 of a shorter "
                "run's iterations")

    def preset(self, name: str) -> Preset:
        """The preset ``name`` of this model; an unknown one raises a KeyError naming the model's presets."""
        for preset in self.presets:
            if preset.name == name:
                return preset
        raise KeyError(f"model {self.name!r} has no preset {name!r}; its presets: "
                       f"{', '.join(p.name for p in self.presets) or 'none'}")

    def describe(self) -> str:
        """Several lines for `python -m glimpse.train models`: paper, equations, inputs, training, defaults."""
        defaults = ", ".join(f"{f.name}={getattr(self.config(), f.name)!r}" for f in dataclasses.fields(self.config))
        outputs = "per-step logits (B, T, classes)" if self.logits == "step" else "per-clip logits (B, 1, classes)"
        outputs += ", attention maps (B, T, K, K)" if self.attention else ", no attention maps"
        whose = "paper's" if self.variant == "equations" else "authors'"
        policy = f"{self.sampling} ({' '.join(POLICIES[self.sampling].__doc__.split()).rstrip('.')})"
        return "\n".join([
            f"{self.name}",
            f"  paper:     {self.paper}",
            f"  variant:   follows the {whose} {self.variant}",
            f"  equations: {self.equations}",
            f"  inputs:    streams={','.join(self.streams)} frames={self.frames} skip={self.skip} -> {outputs}",
            f"  clips:     {policy}; stride={self.stride}; aggregation={self.aggregation}",
            f"  training:  batch_size={self.batch_size} optimizer={self.optimizer} lr={self.lr:g} "
            f"schedule={self.schedule()}",
            f"  defaults:  {defaults}",
            *(preset.describe() for preset in self.presets),
        ])

    def length(self) -> str:
        """How long it trains, in words."""
        if self.steps:
            return f"{self.steps:,} iterations" + (", no early stopping" if self.patience == 0 else "")
        epochs = f"{self.epochs} epochs" if self.epochs else "the default epochs"
        return epochs + (", no early stopping" if self.patience == 0 else "")


@dataclass
class ModelOutput:
    """What every forward returns.

    ``logits``: (B, T, classes) per step or (B, 1, classes) per clip. ``attention``: (B, T, K, K),
    non-negative and summing to 1 over the K*K positions, or None. ``aux_losses``: name -> (B,)
    per-sample penalty, already multiplied by its weight (lambda).
    """

    logits: Tensor
    attention: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


def make_config(spec: ModelSpec, *, channels: int, size: int, classes: int, **overrides) -> ModelConfig:
    """The spec's config with the cube's shape and the given overrides; unknown names raise a TypeError."""
    names = [f.name for f in dataclasses.fields(spec.config)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"model {spec.name!r} has no config field {', '.join(unknown)}; "
                        f"its fields are: {', '.join(names)}")
    return spec.config(channels=channels, size=size, classes=classes, **overrides)


def check_streams(name: str, config: ModelConfig, cubes: tuple[Tensor, ...], count: int) -> tuple[int, int]:
    """Check that ``cubes`` are ``count`` tensors shaped (B, T, channels, size, size); return (B, T)."""
    if len(cubes) != count:
        raise ValueError(f"{name}: expected {count} input stream(s), got {len(cubes)}")
    expected = (config.channels, config.size, config.size)
    first = cubes[0].shape
    for i, cube in enumerate(cubes):
        if cube.dim() != 5 or tuple(cube.shape[2:]) != expected:
            raise ValueError(f"{name}: stream {i} must be (batch, time, {expected[0]}, {expected[1]}, {expected[2]}),"
                             f" got {tuple(cube.shape)}")
        if cube.shape[:2] != first[:2]:
            raise ValueError(f"{name}: streams disagree on (batch, time): {tuple(first[:2])} vs "
                             f"{tuple(cube.shape[:2])}")
    return first[0], first[1]


def positions(cube: Tensor) -> Tensor:
    """(B, T, C, K, K) cube -> (B, T, K*K, C): one feature vector per grid position."""
    return cube.flatten(3).transpose(2, 3)


def attend(weights: Tensor, features: Tensor) -> Tensor:
    """Soft-attention read: sum_i weights_i * features_i, (B, P) x (B, P, C) -> (B, C)."""
    return torch.bmm(weights.unsqueeze(1), features).squeeze(1)


class LSTMStack(nn.Module):
    """Stacked LSTM cells stepped one time step at a time, for inputs that depend on the previous state.

    Dropout is applied between layers (non-recurrent connections only). Where the whole input
    sequence is known in advance, use nn.LSTM instead: it projects every step's input at once.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.cells = nn.ModuleList(nn.LSTMCell(input_size if i == 0 else hidden, hidden) for i in range(layers))
        self.drop = nn.Dropout(dropout)

    def step(self, x: Tensor, state: list[tuple[Tensor, Tensor]] | None) -> list[tuple[Tensor, Tensor]]:
        """One step for (B, input_size) ``x``; ``state`` holds (h, c) per layer, each (B, hidden), or None for zeros."""
        new = []
        for i, cell in enumerate(self.cells):
            h, c = cell(x if i == 0 else self.drop(x), None if state is None else state[i])  # (B, H) each
            new.append((h, c))
            x = h
        return new
