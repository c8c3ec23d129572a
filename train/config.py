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

from glimpse.errors import GlimpseError
from glimpse.train.models import MODELS
from glimpse.train.sampling import POLICIES, Policy, items_per_epoch, make_policy

#: optimizer -> its learning rate when a model's paper used another optimizer
OPTIMIZERS = {"adam": 1e-4, "adadelta": 1.0, "sgd": 1e-2}
DEVICES = ("auto", "cpu", "cuda")

#: the smallest number of batches an epoch is given when the paper's batch size would leave fewer (small stores)
MIN_BATCHES = 8
#: epochs when none are given, unless that leaves fewer than MIN_STEPS optimizer steps on a store of at least
#: FLOOR_VIDEOS training videos: then more. tests/test_reference.py calibrates the floor: on its 40 training videos
#: 2,000 steps (250 epochs) reach an independent trainer's accuracy. A store with fewer training videos has no
#: floor: its test accuracy rests on too few videos to rank models, and more steps only memorise them, so it
#: trains DEFAULT_EPOCHS (a comparison table of such a store takes minutes, not hours).
DEFAULT_EPOCHS = 30
MIN_STEPS = 2000
FLOOR_VIDEOS = 40
#: the share of training videos held out for validation when none is given, unless that holds out fewer than
#: MIN_VALIDATION videos: early stopping and best-checkpoint choice on a handful of videos follow noise, so a
#: small store trains on all its training videos and keeps the last epoch
DEFAULT_VAL_FRACTION = 0.15
MIN_VALIDATION = 20

#: Fields that may change when a run is resumed: where and how it runs, and how long (never what it learns).
RESUMABLE = ("epochs", "device", "workers", "cache_ram", "cache_dir", "progress", "patience")


class ConfigError(GlimpseError, ValueError):
    """An option that does not fit the model or the store; the message says which and why."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. None means "the model's paper default" until :func:`resolve` fills it in.

    ``sampling`` is the clip policy (train/sampling.py: windows, segments, random, spread; the model's
    paper by default), ``frames`` the clip length T, ``stride`` the frames between two clip starts
    (Sharma's training stride s, Quan's segment spacing d), ``clips_per_video`` the clips of a video
    per epoch (random: how many; dense policies: a random subset, 0 all), ``steps`` an iteration
    budget (CHAM's count; it sets ``epochs``, rounded up to whole epochs; 0: use ``epochs``),
    ``shuffle_videos`` the videos whose clips are shuffled together (the shuffle buffer),
    ``aggregation`` how clip scores become a video score ("mean" or "vote"). ``model_args``
    overrides fields of the model's config (hidden, lam, blocks, ...). ``val_fraction`` of the
    training videos is held out by group for validation; ``patience`` epochs without a better
    validation score stop the run (0: never). ``cache_ram`` is a byte budget for holding every
    video in memory (0: read from the store); ``cache_dir`` a folder for a decompressed copy of the run's
    videos, shared between runs (train/cache.py). ``checkpoint_every`` also writes last.pt every N steps.
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
    sampling: str | None = None
    frames: int | None = None
    stride: int | None = None
    clips_per_video: int | None = None
    steps: int = 0
    shuffle_videos: int = 8
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
    cache_dir: str | None = None
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
        if self.sampling is not None and self.sampling not in POLICIES:
            raise ConfigError(f"sampling must be one of {tuple(POLICIES)}, got {self.sampling!r}")
        for name in ("epochs", "batch_size", "frames", "stride", "shuffle_videos"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.workers, self.cache_ram, self.checkpoint_every, self.patience, self.steps,
               self.clips_per_video or 0) < 0:
            raise ConfigError("workers, cache_ram, checkpoint_every, patience, steps and clips_per_video must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (what config.json holds under "train")."""
        return dataclasses.asdict(self)

    def policy(self) -> Policy:
        """The clip policy of a resolved config (see train/sampling.py)."""
        return make_policy(self.sampling, self.frames, self.stride, self.clips_per_video)


def resolve(config: TrainConfig, n_frames: list[int] | None = None) -> tuple[TrainConfig, list[str]]:
    """Fill every None field with the model's paper default; return the config and notes on what was adapted.

    ``n_frames`` (frames of every usable video) adapts a default clip that is longer than every video:
    the clip becomes as long as the longest video (``--frames`` is never changed); videos still shorter
    than the clip are padded when read. With ``steps``, ``epochs`` becomes the epochs that many
    batches take (rounded up) at the policy's clips per epoch of these videos.
    """
    spec = MODELS[config.model]
    filled = {
        "lr": spec.lr if config.optimizer in (None, spec.optimizer) else OPTIMIZERS[config.optimizer],
        "optimizer": spec.optimizer,
        "sampling": spec.sampling,
        "batch_size": spec.batch_size,
        "frames": spec.frames,
        "stride": spec.stride,
        "aggregation": spec.aggregation,
        "lr_drop_step": spec.lr_drop_step,
        "lr_drop_to": spec.lr_drop_to,
    }
    notes = []
    sampling = config.sampling or filled["sampling"]
    if config.frames is None and n_frames and sampling != "spread":
        longest = max(n_frames)
        if longest < filled["frames"]:
            notes.append(f"clip length adapted from the paper's {filled['frames']} to {longest} frames: the longest "
                         f"video has {longest} frames; set --frames to choose")
            filled["frames"] = longest
    values = {name: value if getattr(config, name) is None else getattr(config, name) for name, value in filled.items()}
    resolved = dataclasses.replace(config, **values)
    items = items_per_epoch(n_frames, resolved.policy()) if n_frames else 0  # clips an epoch trains on
    if config.batch_size is None and items and items < MIN_BATCHES * spec.batch_size:
        adapted = max(1, math.ceil(items / MIN_BATCHES))
        notes.append(f"batch size adapted from the paper's {spec.batch_size} to {adapted}: {items} clips an epoch "
                     f"would give fewer than {MIN_BATCHES} batches; set --batch-size to choose")
        resolved = dataclasses.replace(resolved, batch_size=adapted)
    batches = math.ceil(items / resolved.batch_size) if items else 0
    if config.steps and batches:
        resolved = dataclasses.replace(resolved, epochs=math.ceil(config.steps / batches))
        notes.append(f"--steps {config.steps}: {resolved.epochs} epochs of {batches} batches")
    elif config.epochs is None:
        epochs = DEFAULT_EPOCHS
        if batches and batches * DEFAULT_EPOCHS < MIN_STEPS and len(n_frames or ()) >= FLOOR_VIDEOS:
            epochs = math.ceil(MIN_STEPS / batches)
            notes.append(f"{epochs} epochs instead of {DEFAULT_EPOCHS}: {batches} batches an epoch would give fewer "
                         f"than {MIN_STEPS} optimizer steps; set --epochs to choose")
        elif batches and batches * DEFAULT_EPOCHS < MIN_STEPS:
            notes.append(f"{DEFAULT_EPOCHS} epochs ({batches * DEFAULT_EPOCHS} steps), no {MIN_STEPS}-step floor: "
                         f"{len(n_frames or ())} training videos (< {FLOOR_VIDEOS}) are too few to rank models on; "
                         "set --epochs or --steps for more")
        resolved = dataclasses.replace(resolved, epochs=epochs)
    return resolved, notes


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
