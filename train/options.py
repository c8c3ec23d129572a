"""The training options of the command lines (train, sweep), declared once from :class:`TrainConfig`'s fields.

Each option's type comes from its field, its choices from the field's registry (clip policies, optimizers,
aggregations, devices) and its help from :data:`OPTION_HELP`; a field whose default is the model's paper shows what
each registered model uses.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from glimpse.choices import DEVICES, RegistryChoice
from glimpse.train.aggregation import AGGREGATIONS
from glimpse.train.config import AMP, OPTIMIZERS, ConfigError, TrainConfig, parse_model_args
from glimpse.train.data import parse_bytes
from glimpse.train.models import MODELS
from glimpse.train.models.base import STANDARDIZATIONS
from glimpse.train.sampling import POLICIES

#: TrainConfig field -> (help, the smallest value it takes). Fields left out have no option of their own
#: (store, model, out; model_args is --set; cache_ram is --cache-ram, progress is --quiet).
OPTION_HELP: dict[str, tuple[str, int | None]] = {
    "split": ("Official split K of the dataset.", None),
    "epochs": ("Epochs to train. [the model's, 30 for most; 2,000 steps from 40 training videos]", 1),
    "batch_size": ("Clips per step.", 1),
    "lr": ("Learning rate.", None),
    "optimizer": ("Optimizer.", None),
    "seed": ("Random seed: the same seed gives the same metrics.", None),
    "device": ("Where the model trains.", None),
    "sampling": ("Clip policy (train/sampling.py).", None),
    "frames": ("Clip length T in frames.", 1),
    "stride": ("Frames between two clip starts: training stride s, segment spacing d.", 1),
    "clips_per_video": ("Clips of a video per epoch: random windows drawn, or a random subset of the dense ones "
                        "(0 all).", 0),
    "steps": ("Iteration budget: sets --epochs (rounded up), 0 off.", 0),
    "shuffle_videos": ("Videos whose clips are shuffled together, 0: as many as 1 GiB of frames holds.", 0),
    "aggregation": ("Video score from clips.", None),
    "val_fraction": ("Held out by group. [0.15, or 0 where that is < 20 videos]", None),
    "patience": ("Early stopping after N epochs without a better validation score, 0 never. [5; cham 0]", 0),
    "preset": ("A named recipe of the model (python -m glimpse.train models lists them), e.g. softattn_code hmdb51.",
               None),
    "standardize": ("How --normalize standardizes each channel: mean_std (x - mean) / std, or rms x / rms (no mean "
                    "shift: zero attention keeps a cell at zero).", None),
    "norm_videos": ("Videos the standardization statistics are taken on.", 1),
    "workers": ("DataLoader worker processes (spawned).", 0),
    "cache_dir": ("Keep a decompressed copy of the run's videos here (a local disk), shared between runs.", None),
    "checkpoint_every": ("Also checkpoint every N steps, 0 never.", 0),
    "amp": ("Mixed precision of the training forward: bf16 autocast, or none (float32).", None),
}

#: Fields whose choices are a registry's names.
CHOICES: dict[str, Iterable[str]] = {"optimizer": OPTIMIZERS, "device": DEVICES, "sampling": POLICIES,
                                     "aggregation": AGGREGATIONS, "amp": AMP, "standardize": STANDARDIZATIONS}

#: Fields whose default (None) is each model's paper value: the ModelSpec attribute it comes from.
PAPER_DEFAULTS = {"batch_size": "batch_size", "lr": "lr", "optimizer": "optimizer", "sampling": "sampling",
                  "frames": "frames", "stride": "stride", "aggregation": "aggregation", "standardize": "standardize"}


def paper_defaults(attribute: str, whose: str = "the model's paper") -> str:
    """``[the model's paper: 128; convattn/cham 64; regattn 256]``: the registered models' values, the most common
    one first and the models that differ from it named; ``whose`` says where the values come from."""
    by_value: dict[Any, list[str]] = {}
    for name, spec in MODELS.items():
        by_value.setdefault(getattr(spec, attribute), []).append(name)
    groups = sorted(by_value.items(), key=lambda item: -len(item[1]))
    shown = [f"{value:g}" if isinstance(value, float) else str(value) for value, _ in groups]
    return f"[{whose}: " + "; ".join([shown[0], *(f"{'/'.join(names)} {text}" for (_, names), text
                                                            in zip(groups[1:], shown[1:], strict=True))]) + "]"


def _click_type(name: str) -> Any:
    if name in CHOICES:
        return RegistryChoice(CHOICES[name])
    if name == "cache_dir":
        return click.Path(file_okay=False)
    kind = typing.get_type_hints(TrainConfig)[name]
    base = next((k for k in (bool, int, float, str) if k is kind or k in typing.get_args(kind)), str)
    minimum = OPTION_HELP[name][1]
    if name == "val_fraction":
        return click.FloatRange(0, 1, max_open=True)
    if base is int and minimum is not None:
        return click.IntRange(min=minimum)
    return base


def config_option(name: str) -> Callable:
    """The click option of TrainConfig field ``name`` (None: left to the config's or the model's default)."""
    text, _minimum = OPTION_HELP[name]
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
    if name in PAPER_DEFAULTS:
        text += " " + paper_defaults(PAPER_DEFAULTS[name], "the model's" if name == "standardize" else
                                     "the model's paper")
    elif default is not None and "[" not in text:
        text += f" [{default}]"
    return click.option(f"--{name.replace('_', '-')}", name, type=_click_type(name), default=None, help=text)


def config_options(names: Iterable[str]) -> Callable:
    """A decorator adding the options of TrainConfig fields ``names``, in that order."""
    names = list(names)

    def add(command: Callable) -> Callable:
        for name in reversed(names):
            command = config_option(name)(command)
        return command

    return add


def model_settings(model: str, sets: Iterable[str], lam: float | None = None,
                   blocks: int | None = None) -> dict[str, Any]:
    """The model config fields of ``--set NAME=VALUE`` (and the ``--lambda`` / ``--blocks`` shorthands)."""
    assignments = [*sets, *([f"lam={lam!r}"] if lam is not None else []),
                   *([f"blocks={blocks}"] if blocks is not None else [])]
    return parse_model_args(model, assignments)


def config_values(plain: dict[str, Any], cache_ram: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """TrainConfig keyword arguments from the options given (None ones left to the defaults)."""
    values = {k: v for k, v in plain.items() if v is not None}
    if cache_ram:
        try:
            values["cache_ram"] = parse_bytes(cache_ram)
        except ValueError as err:
            raise ConfigError(f"--cache-ram {cache_ram}: {err}") from None
    if quiet:
        values["progress"] = False
    return values
