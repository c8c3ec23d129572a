"""What one training run is: :class:`TrainConfig`, and each paper's training defaults per model.

A config as the user gives it (:class:`TrainConfig`) leaves the model-dependent fields at None; :func:`resolve`
fills them from the model's registry entry (train/models: each ModelSpec carries its paper's recipe), adapts the
clip length to a store whose videos are all shorter than the paper's clips, and the batch size to a store too small
for the paper's batches. The result is a :class:`ResolvedConfig`, whose fields are never None: what a run trains
with, what the run directory records and what ``--resume`` reads back.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glimpse.choices import DEVICES
from glimpse.errors import GlimpseError
from glimpse.train.aggregation import AGGREGATIONS
from glimpse.train.loader import SHUFFLE_BYTES
from glimpse.train.models import MODELS
from glimpse.train.models.base import PROTOCOL, STANDARDIZATIONS, ModelSpec
from glimpse.train.sampling import POLICIES, Policy, items_per_epoch, make_policy

#: optimizer -> its learning rate when a model's paper used another optimizer
OPTIMIZERS = {"adam": 1e-4, "adadelta": 1.0, "sgd": 1e-2}

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
#: epochs without a better validation score that stop a run, unless the model's recipe says otherwise
DEFAULT_PATIENCE = 5
DEFAULT_MOMENTUM = 0.9
#: the share of training videos held out for validation when none is given, unless that holds out fewer than
#: MIN_VALIDATION videos: early stopping and best-checkpoint choice on a handful of videos follow noise, so a
#: small store trains on all its training videos and keeps the last epoch
DEFAULT_VAL_FRACTION = 0.15
MIN_VALIDATION = 20

#: Mixed precision of the training forward: none (float32) or bf16 (torch.autocast to bfloat16).
AMP = ("none", "bf16")

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
    ``shuffle_videos`` caps the videos whose clips are shuffled together (0: as many as the shuffle buffer's bytes
    hold, train/loader.py),
    ``aggregation`` how clip scores become a video score (train/aggregation.py). ``model_args``
    overrides fields of the model's config (hidden, lam, blocks, ...). ``val_fraction`` of the
    training videos is held out by group for validation; ``patience`` epochs without a better
    validation score stop the run (0: never; None: the model's, else DEFAULT_PATIENCE). ``preset`` names one of
    the model's presets (its other scripts' recipe: model settings, optimizer, rate). ``cache_ram`` is a byte
    budget for holding every video in memory (0: read from the store); ``cache_dir`` a folder for a decompressed
    copy of the run's videos, shared between runs (train/cache.py). ``checkpoint_every`` also writes last.pt every
    N steps. ``amp`` bf16 runs the training forward under bfloat16 autocast (validation and tests stay float32).
    ``standardize`` how ``normalize`` standardizes each channel (train/models/base.py STANDARDIZATIONS: mean_std,
    or rms for the models whose attention multiplies the cube; None: the model's).
    """

    store: str
    model: str
    out: str
    split: str = "1"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    seed: int = 0
    device: str = "auto"
    sampling: str | None = None
    frames: int | None = None
    stride: int | None = None
    clips_per_video: int | None = None
    steps: int = 0
    shuffle_videos: int = 0
    aggregation: str | None = None
    lr_drop_step: int | None = None
    lr_drop_to: float | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    val_fraction: float | None = None
    patience: int | None = None
    normalize: bool = True
    standardize: str | None = None
    norm_videos: int = 256
    workers: int = 2
    cache_ram: int = 0
    cache_dir: str | None = None
    checkpoint_every: int = 0
    amp: str = "none"
    progress: bool = True
    preset: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_args", dict(self.model_args))
        object.__setattr__(self, "split", str(self.split))
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; registered models: {', '.join(MODELS)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.amp not in AMP:
            raise ConfigError(f"amp must be one of {AMP}, got {self.amp!r}")
        if self.preset is not None:
            try:
                MODELS[self.model].preset(self.preset)
            except KeyError as err:
                raise ConfigError(err.args[0]) from None
        if self.standardize is not None and self.standardize not in STANDARDIZATIONS:
            raise ConfigError(f"standardize must be one of {STANDARDIZATIONS}, got {self.standardize!r}")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {tuple(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.sampling is not None and self.sampling not in POLICIES:
            raise ConfigError(f"sampling must be one of {tuple(POLICIES)}, got {self.sampling!r}")
        for name in ("epochs", "batch_size", "frames", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.workers, self.cache_ram, self.checkpoint_every, self.patience or 0, self.steps,
               self.clips_per_video or 0, self.shuffle_videos) < 0:
            raise ConfigError("workers, cache_ram, checkpoint_every, patience, steps, clips_per_video and "
                              "shuffle_videos must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (what config.json holds under "train")."""
        return dataclasses.asdict(self)



@dataclass(frozen=True, kw_only=True)
class ResolvedConfig(TrainConfig):
    """A :class:`TrainConfig` with every model-dependent field filled in by :func:`resolve`."""

    epochs: int = field()
    batch_size: int = field()
    lr: float = field()
    optimizer: str = field()
    sampling: str = field()
    frames: int = field()
    stride: int = field()
    aggregation: str = field()
    val_fraction: float = field()
    momentum: float = field()
    patience: int = field()
    standardize: str = field()

    def policy(self) -> Policy:
        """The clip policy of the run (see train/sampling.py)."""
        return make_policy(self.sampling, self.frames, self.stride, self.clips_per_video)


def resolve(config: TrainConfig, n_frames: list[int] | None = None) -> tuple[ResolvedConfig, list[str]]:
    """Fill every None field with the model's paper default; return the config and notes on what was adapted.

    ``n_frames`` (frames of every usable video) adapts a default clip that is longer than every video:
    the clip becomes as long as the longest video (``--frames`` is never changed); videos still shorter
    than the clip are padded when read. With ``steps``, ``epochs`` becomes the epochs that many
    batches take (rounded up) at the policy's clips per epoch of these videos.
    """
    spec = MODELS[config.model]
    preset = spec.preset(config.preset) if config.preset else None
    optimizer = preset.optimizer if preset and preset.optimizer else spec.optimizer
    lr = preset.lr if preset and preset.lr is not None else spec.lr
    filled = {
        "lr": lr if config.optimizer in (None, optimizer) else OPTIMIZERS[config.optimizer],
        "optimizer": optimizer,
        "sampling": spec.sampling,
        "batch_size": spec.batch_size,
        "frames": spec.frames,
        "stride": spec.stride,
        "aggregation": spec.aggregation,
        "lr_drop_step": spec.lr_drop_step,
        "lr_drop_to": spec.lr_drop_to,
        "standardize": spec.standardize,
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
    values["val_fraction"] = default_val_fraction(spec) if config.val_fraction is None else config.val_fraction
    default_momentum = preset.momentum if preset and preset.momentum is not None else DEFAULT_MOMENTUM
    values["momentum"] = default_momentum if config.momentum is None else config.momentum
    default_patience = DEFAULT_PATIENCE if spec.patience is None else spec.patience
    values["patience"] = default_patience if config.patience is None else config.patience
    if preset:
        values["model_args"] = {**preset.settings, **config.model_args}
        notes.append(f"preset {preset.name}: {preset.source}")
    policy = make_policy(values["sampling"], values["frames"], values["stride"], config.clips_per_video)
    items = items_per_epoch(n_frames, policy) if n_frames else 0  # clips an epoch trains on
    if config.batch_size is None and items and items < MIN_BATCHES * spec.batch_size:
        values["batch_size"] = max(1, math.ceil(items / MIN_BATCHES))
        notes.append(f"batch size adapted from the paper's {spec.batch_size} to {values['batch_size']}: {items} "
                     f"clips an epoch would give fewer than {MIN_BATCHES} batches; set --batch-size to choose")
    batches = math.ceil(items / values["batch_size"]) if items else 0
    default_epochs = spec.epochs or DEFAULT_EPOCHS
    values["epochs"] = config.epochs or default_epochs
    steps = config.steps or (budget_steps(spec, values, len(n_frames or []), notes) if config.epochs is None else 0)
    if steps and batches:
        values["epochs"] = math.ceil(steps / batches)
        given = f"--steps {steps}" if config.steps else f"the model's budget of {steps} steps"
        notes.append(f"{given}: {values['epochs']} epochs of {batches} batches")
    elif config.epochs is None and batches and batches * default_epochs < MIN_STEPS:
        if len(n_frames or ()) >= FLOOR_VIDEOS:
            values["epochs"] = math.ceil(MIN_STEPS / batches)
            notes.append(f"{values['epochs']} epochs instead of {default_epochs}: {batches} batches an epoch would "
                         f"give fewer than {MIN_STEPS} optimizer steps; set --epochs to choose")
        else:
            notes.append(f"{default_epochs} epochs ({batches * default_epochs} steps), no {MIN_STEPS}-step floor: "
                         f"{len(n_frames or ())} training videos (< {FLOOR_VIDEOS}) are too few to rank models on; "
                         "set --epochs or --steps for more")
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    return ResolvedConfig(**{**given, **values}), notes


def default_val_fraction(spec: ModelSpec) -> float:
    """The share of training videos the model holds out for validation by default (0: the full training set)."""
    return DEFAULT_VAL_FRACTION if spec.val_fraction is None else spec.val_fraction


def protocol(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(setting, value in words, source) for each of PROTOCOL: how long the model trains, on what validation, how its
    clips are shuffled, how its features are standardized, its weight decay; the source is one of SOURCES, with the
    spec's note after it where it gives one."""
    patience = DEFAULT_PATIENCE if spec.patience is None else spec.patience
    fraction = default_val_fraction(spec)
    length = (f"{spec.steps:,} iterations, the drop at {spec.lr_drop_step:,} (both scaled on fewer than "
              f"{spec.steps_videos} training videos)" if spec.steps else
              f"{spec.epochs or DEFAULT_EPOCHS} epochs (at least {MIN_STEPS:,} steps from {FLOOR_VIDEOS} training "
              "videos unless --epochs is given)")
    if fraction:
        stop = f"early stop after {patience} epochs without a better score" if patience else "no early stopping"
        validation = (f"{fraction:g} of the training videos held out by group (none where that is < "
                      f"{MIN_VALIDATION} videos), the best validation epoch kept, {stop}")
    else:
        validation = "none: the full training set trains, the last epoch is kept, no early stopping"
    shuffle = (f"{spec.sampling} clips, every training video's clips shuffled together (a {SHUFFLE_BYTES / 2**30:g} "
               "GiB buffer of videos; the whole training set where it fits)")
    standardization = {"mean_std": "mean_std: (x - mean) / std per channel",
                       "rms": "rms: x / rms per channel, no mean shift (zero attention keeps a cell at zero)"}
    decay = f"{spec.config().weight_decay:g} on the {spec.decay} loss"
    values = dict(zip(PROTOCOL, (length, validation, shuffle, standardization[spec.standardize], decay), strict=True))
    return [(name, values[name], spec.sources.get(name, "ours")) for name in PROTOCOL]


def describe_protocol(spec: ModelSpec) -> str:
    """The protocol lines of `python -m glimpse.train models`: ``    validation: ... [released code: note]``."""
    width = max(len(name) for name in PROTOCOL) + 1
    return "\n".join(["  protocol:", *(f"    {name + ':':<{width}} {value} [{source}]"
                                       for name, value, source in protocol(spec))])


def budget_steps(spec: Any, values: dict[str, Any], videos: int, notes: list[str]) -> int:
    """The model's iteration budget (0: none) on ``videos`` training videos. A store with fewer than the spec's
    ``steps_videos`` scales the budget and the drop by videos / steps_videos (at least MIN_STEPS steps, the drop at
    the same share of them); ``values["lr_drop_step"]`` is set to the scaled drop and the rule goes into ``notes``."""
    if not spec.steps:
        return 0
    if not videos or videos >= spec.steps_videos:
        return spec.steps
    steps = max(MIN_STEPS, round(spec.steps * videos / spec.steps_videos))
    if values["lr_drop_step"] == spec.lr_drop_step:  # not set by the user: the drop keeps its share of the budget
        values["lr_drop_step"] = round(spec.lr_drop_step * steps / spec.steps)
    notes.append(f"iteration budget scaled from {spec.steps:,} to {steps:,} (drop at {values['lr_drop_step']:,}): "
                 f"{videos} training videos, fewer than the {spec.steps_videos} the paper's budget ran on; rule: "
                 f"steps = max({MIN_STEPS}, {spec.steps:,} x videos / {spec.steps_videos}), the drop at the same share")
    return steps


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
