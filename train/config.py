"""What one training run is: :class:`TrainConfig`, and each paper's training defaults per model.

A config as the user gives it leaves the model-dependent fields at None; :func:`resolve` fills them
from the model's registry entry (train/models: each ModelSpec carries its paper's recipe), adapts the
clip length to a store whose videos are all shorter than the paper's clips, and the batch size to a
store too small for the paper's batches. The resolved config is what the run directory
records and what ``--resume`` reads back.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glimpse.train.models import MODELS

#: optimizer -> its learning rate when a model's paper used another optimizer
OPTIMIZERS = {"adam": 1e-4, "adadelta": 1.0, "sgd": 1e-2}
DEVICES = ("auto", "cpu", "cuda")

#: the smallest number of batches an epoch is given when the paper's batch size would leave fewer (small stores)
MIN_BATCHES = 8
#: epochs when none are given, unless that leaves fewer than MIN_STEPS optimizer steps (a small store): then more
DEFAULT_EPOCHS = 30
MIN_STEPS = 2000
#: the share of training videos held out for validation when none is given, unless that holds out fewer than
#: MIN_VALIDATION videos: early stopping and best-checkpoint choice on a handful of videos follow noise, so a
#: small store trains on all its training videos and keeps the last epoch
DEFAULT_VAL_FRACTION = 0.15
MIN_VALIDATION = 20

#: Fields that may change when a run is resumed: where and how it runs, and how long (never what it learns).
RESUMABLE = ("epochs", "device", "workers", "cache_ram", "progress", "patience")


class ConfigError(ValueError):
    """An option that does not fit the model or the store; the message says which and why."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. None means "the model's paper default" until :func:`resolve` fills it in.

    ``frames`` is the clip length T in time steps, ``stride`` the stored frames between two steps
    (d), ``aggregation`` how clip scores become a video score ("mean" or "vote"). ``model_args``
    overrides fields of the model's config (hidden, lam, blocks, ...). ``val_fraction`` of the
    training videos is held out by group for validation; ``patience`` epochs without a better
    validation score stop the run (0: never). ``cache_ram`` is a byte budget for holding every
    video in memory (0: read from the store). ``checkpoint_every`` also writes last.pt every N steps.
    """

    store: str
    model: str
    out: str
    split: str = "1"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    frames: int | None = None
    stride: int | None = None
    aggregation: str | None = None
    lr_drop_step: int | None = None
    lr_drop_to: float | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    val_fraction: float | None = None
    patience: int = 5
    normalize: bool = True
    norm_videos: int = 256
    workers: int = 2
    cache_ram: int = 0
    checkpoint_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_args", dict(self.model_args))
        object.__setattr__(self, "split", str(self.split))
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; registered models: {', '.join(MODELS)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.aggregation is not None and self.aggregation not in ("mean", "vote"):
            raise ConfigError(f"aggregation must be 'mean' or 'vote', got {self.aggregation!r}")
        for name in ("epochs", "batch_size", "frames", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.cache_ram < 0 or self.checkpoint_every < 0 or self.patience < 0:
            raise ConfigError("workers, cache_ram, checkpoint_every and patience must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (what config.json holds under "train")."""
        return dataclasses.asdict(self)


def resolve(config: TrainConfig, n_frames: list[int] | None = None) -> tuple[TrainConfig, list[str]]:
    """Fill every None field with the model's paper default; return the config and notes on what was adapted.

    ``n_frames`` (frames of every usable video) adapts a default clip that is longer than every video:
    the clip becomes as long as the longest video allows at the default stride (``--frames`` is never
    changed). Videos still shorter than the clip are padded when read.
    """
    spec = MODELS[config.model]
    filled = {
        "lr": spec.lr if config.optimizer in (None, spec.optimizer) else OPTIMIZERS[config.optimizer],
        "optimizer": spec.optimizer,
        "batch_size": spec.batch_size,
        "frames": spec.frames,
        "stride": spec.stride,
        "aggregation": spec.aggregation,
        "lr_drop_step": spec.lr_drop_step,
        "lr_drop_to": spec.lr_drop_to,
    }
    notes = []
    if config.frames is None and n_frames:
        stride = config.stride or filled["stride"]
        longest = max(n_frames)
        span = (filled["frames"] - 1) * stride + 1
        if longest < span:
            adapted = max(1, math.ceil(longest / stride))
            notes.append(f"clip length adapted from the paper's {filled['frames']} to {adapted} steps: the longest "
                         f"video has {longest} frames (stride {stride}); set --frames to choose")
            filled["frames"] = adapted
    if config.batch_size is None and n_frames and len(n_frames) < MIN_BATCHES * spec.batch_size:
        adapted = max(1, math.ceil(len(n_frames) / MIN_BATCHES))
        notes.append(f"batch size adapted from the paper's {spec.batch_size} to {adapted}: {len(n_frames)} videos "
                     f"would give fewer than {MIN_BATCHES} batches an epoch; set --batch-size to choose")
        filled["batch_size"] = adapted
    filled["epochs"] = DEFAULT_EPOCHS
    if config.epochs is None and n_frames:
        batches = math.ceil(len(n_frames) / (config.batch_size or filled["batch_size"]))
        if batches * DEFAULT_EPOCHS < MIN_STEPS:
            filled["epochs"] = math.ceil(MIN_STEPS / batches)
            notes.append(f"{filled['epochs']} epochs instead of {DEFAULT_EPOCHS}: {batches} batches an epoch would "
                         f"give fewer than {MIN_STEPS} optimizer steps; set --epochs to choose")
    values = {name: value if getattr(config, name) is None else getattr(config, name) for name, value in filled.items()}
    return dataclasses.replace(config, **values), notes


def parse_value(text: str, default: Any) -> Any:
    """``text`` as the type of ``default`` (a model config field): int, float, bool, tuple of str, or None/str."""
    if text.lower() == "none":
        return None
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if isinstance(default, tuple):
        return tuple(part for part in re.split(r"[,+]", text) if part)
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ConfigError(f"expected a number ({kind.__name__}), got {text!r}") from None
    for kind in (int, float):  # default None: the most specific number type that reads it, else the text
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_args(model: str, assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["hidden=16", "lam=1e-3"]`` -> {"hidden": 16, "lam": 0.001}, typed by the model's config fields."""
    spec = MODELS[model]
    fields = {f.name: f for f in dataclasses.fields(spec.config)}
    defaults = spec.config()
    parsed = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if name == "lambda":
            name = "lam"
        if not sep:
            raise ConfigError(f"--set takes NAME=VALUE, got {item!r}")
        if name not in fields or name in ("channels", "size", "classes"):
            settable = [f for f in fields if f not in ("channels", "size", "classes")]
            raise ConfigError(f"model {model!r} has no setting {name!r}; its settings are: {', '.join(settable)}")
        try:
            parsed[name] = parse_value(text.strip(), getattr(defaults, name))
        except ConfigError as err:
            raise ConfigError(f"--set {item}: {err}") from None
    return parsed
