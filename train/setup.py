"""Everything a run needs before its first step: the store checked against the model, the videos, the
resolved config, the model, its optimizer, the standardization and the data loaders.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from glimpse.store import Store, open_store
from glimpse.train.cache import DiskCache
from glimpse.train.clips import Selection, select
from glimpse.train.config import (
    MIN_VALIDATION,
    ConfigError,
    ResolvedConfig,
    TrainConfig,
    default_val_fraction,
    resolve,
)
from glimpse.train.data import (
    ClipDataset,
    FeatureReader,
    Normalization,
    VideoDataset,
    compute_normalization,
    load_cache,
    targets_for,
    unfit_videos,
)
from glimpse.train.loader import BATCHES_AHEAD, EpochLoader, make_loader
from glimpse.train.models import MODELS, build_model
from glimpse.train.models.base import make_config
from glimpse.train.sampling import Policy

log = logging.getLogger("train")

#: stream -> what to extract to get it
STREAM_HINTS = {
    "rgb": "extract the RGB cubes (every extraction writes them)",
    "flow_cnn": "re-extract with optical flow: python -m glimpse.extract ... --flow tvl1 (or farneback, raft), "
                "which adds the 'flow' and 'flow_cnn' streams",
    "flow": "re-extract with --flow tvl1 (or farneback, raft)",
    "flow_stack": "re-extract with optical flow and the stacked-flow network: python -m glimpse.extract ... --flow "
                  "tvl1 --streams rgb,flow,flow_stack",
}

#: What a model reading flow_cnn is told when the store has no flow_stack (HAN's temporal stream is a motion network).
NOT_MOTION = ("{model}: the temporal stream is flow_cnn, one flow field rendered as an image through the RGB network, "
              "not a motion network; extract flow_stack (--flow tvl1 --streams rgb,flow,flow_stack) for HAN's")


@dataclass
class Setup:
    """A run ready to train: resolved config, data, model and optimizer (not yet restored from a checkpoint)."""

    config: ResolvedConfig
    store: Store
    selection: Selection
    streams: tuple[str, ...]
    clip: Policy
    multi_label: bool
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: str
    train_dataset: ClipDataset
    val_dataset: VideoDataset
    test_dataset: VideoDataset
    loader: EpochLoader  # the training epochs' batches
    val_loader: DataLoader | None
    notes: list[str]
    unfit: dict[str, str] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What config.json records besides the TrainConfig."""
        sel = self.selection
        return {
            "model": {"name": self.config.model, "config": dataclasses.asdict(self.model.config),
                      "parameters": sum(p.numel() for p in self.model.parameters())},
            "store": {"path": self.store.path, "config_hash": self.store.config_hash, "dataset": self.store.dataset,
                      "classes": list(self.store.classes), "streams": self.store.streams},
            "data": {"split": self.config.split, "streams": list(self.streams), "multi_label": self.multi_label,
                     "train": len(sel.train), "val": len(sel.val), "test": len(sel.test),
                     "skipped_not_done": sel.not_done, "skipped_unfit": sorted(self.unfit),
                     "val_groups": list(sel.val_groups),
                     "padded_videos": sum(self.clip.padded(v.n_frames) for v in sel.train + sel.val + sel.test),
                     "sampling": self.clip.to_dict(), "clips_per_epoch": self.loader.items,
                     "batches_per_epoch": self.loader.batches},
            "notes": self.notes,
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
        }


def model_streams(config: TrainConfig) -> tuple[str, ...]:
    """The store streams the model reads, in forward order (HAN's config may choose them)."""
    spec = MODELS[config.model]
    return tuple(config.model_args.get("streams", getattr(spec.config(), "streams", spec.streams)))


def temporal_stream(store: Store, config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``config`` reading flow_stack in place of flow_cnn where the model's default streams read flow_cnn and the
    store has flow_stack (HAN's temporal stream: stacked flow into a flow network); else a one-line note when the
    model reads flow_cnn. Streams chosen with ``--set streams=...`` are kept."""
    streams = model_streams(config)
    if "flow_cnn" not in streams:
        return config, []
    if "streams" not in config.model_args and "flow_stack" in store.streams:
        chosen = tuple("flow_stack" if s == "flow_cnn" else s for s in streams)
        return dataclasses.replace(config, model_args={**config.model_args, "streams": chosen}), []
    return config, [NOT_MOTION.format(model=config.model)]


def check_store(store: Store, config: TrainConfig, streams: tuple[str, ...]) -> tuple[int, int]:
    """Fail before training when the store lacks a stream the model needs; return (channels, size)."""
    missing = [s for s in streams if s not in store.streams]
    if missing:
        hints = "; ".join(f"{s}: {STREAM_HINTS.get(s, 'extract it')}" for s in missing)
        raise ConfigError(f"{store.path}: model {config.model!r} needs stream(s) {', '.join(missing)}, which this "
                          f"store lacks (it has {', '.join(sorted(store.streams))}). {hints}")
    shapes = {s: tuple(store.streams[s]["frame_shape"]) for s in streams}
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"{store.path}: model {config.model!r} needs streams of one cube shape, got {shapes}")
    channels, size, _ = shapes[streams[0]]
    return channels, size


def make_optimizer(config: ResolvedConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer; the model config's weight_decay gamma is applied here: gamma theta added to the gradient
    of our batch-mean loss, or, for a model whose decay is on the "batch sum" (Sharma's released code adds
    decay_c ||theta||^2 to the loss summed over the batch, gradient 2 decay_c theta), 2 gamma theta / B: the same
    step relative to the data's gradient."""
    gamma = getattr(model.config, "weight_decay", 0.0)
    decay = 2 * gamma / config.batch_size if MODELS[config.model].decay == "batch sum" else gamma
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=decay)
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=config.lr, rho=0.95, eps=1e-6, weight_decay=decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=decay)


def pick_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    return device


def drop_unfit(store: Store, selection: Selection, streams: tuple[str, ...]) -> tuple[Selection, dict[str, str]]:
    """The selection without videos whose arrays do not fit the store's metadata, and why each was dropped.

    Each dropped video is logged as a warning; a split left with no training video is a ConfigError.
    """
    unfit = unfit_videos(store, selection.train + selection.val + selection.test, streams)
    if not unfit:
        return selection, unfit

    def keep(videos):
        return tuple(v for v in videos if v.id not in unfit)

    kept = dataclasses.replace(selection, train=keep(selection.train), val=keep(selection.val),
                               test=keep(selection.test))
    if not kept.train:
        raise ConfigError(f"{store.path}: no training video is left: every done one has arrays that do not match "
                          f"the store's metadata (first: {next(iter(unfit.items()))}); run "
                          f"python -m glimpse.store verify {store.path}")
    return kept, unfit


def select_videos(store: Store, config: TrainConfig,
                  streams: tuple[str, ...]) -> tuple[Selection, TrainConfig, dict[str, str], list[str]]:
    """The split's train / val / test videos (the config with the validation share used), the done videos dropped
    as unfit and why, and notes on what was left out."""
    small = 0  # validation videos a default hold-out would have had, when too few to be used
    try:
        fraction = default_val_fraction(MODELS[config.model]) if config.val_fraction is None else config.val_fraction
        selection = select(store, config.split, fraction, config.seed)
        if config.val_fraction is None and 0 < len(selection.val) < MIN_VALIDATION:  # too few to stop on: train on all
            small = len(selection.val)
            selection, fraction = select(store, config.split, 0.0, config.seed), 0.0
    except ValueError as err:
        raise ConfigError(str(err)) from None
    selection, unfit = drop_unfit(store, selection, streams)
    notes = []
    if small:
        notes.append(f"no validation: {small} held-out videos (< {MIN_VALIDATION}) would stop and choose the "
                     "checkpoint on noise; every training video trains and the last epoch is kept "
                     "(--val-fraction sets it)")
    if selection.not_done:
        notes.append(f"{selection.not_done} videos of split {config.split} are not done in the store: skipped")
    if unfit:
        listed = "; ".join(f"{vid} ({why})" for vid, why in list(unfit.items())[:10])
        more = f" and {len(unfit) - 10} more" if len(unfit) > 10 else ""
        notes.append(f"{len(unfit)} done videos skipped, their arrays do not match the store's metadata (python -m "
                     f"glimpse.store verify {store.path} lists them): {listed}{more}")
    if fraction > 0 and not selection.val:
        notes.append("no validation videos could be held out by group (every class needs a training group): "
                     "the last epoch is the best")
    return selection, dataclasses.replace(config, val_fraction=fraction), unfit, notes


def build_run_model(config: ResolvedConfig, store: Store, channels: int, size: int,
                    device: str) -> tuple[nn.Module, list[str]]:
    """The model under the run's seed, on ``device``, and the warnings its build gave."""
    torch.manual_seed(config.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = build_model(config.model, channels=channels, size=size, classes=len(store.classes),
                                **config.model_args)
        except ValueError as err:  # a setting that does not fit the store's cubes, e.g. regattn blocks > K
            raise ConfigError(f"{store.path}: cubes ({channels}, {size}, {size}): {err}") from None
    return model.to(device), [str(w.message) for w in caught]


def open_reader(config: ResolvedConfig, store: Store, videos: tuple, streams: tuple[str, ...]) -> FeatureReader:
    """The run's reader of ``videos``: from RAM (--cache-ram), a local copy (--cache-dir) or the store itself."""
    cache = load_cache(store, videos, streams, config.cache_ram)
    disk = DiskCache.build(store, videos, streams, config.cache_dir) if config.cache_dir and cache is None else None
    return FeatureReader(store.path, cache, disk).open(videos, streams)


def prepare(config: TrainConfig, normalization_state: dict | None = None) -> Setup:
    """Check, select, resolve and build everything for ``config`` (see the module docstring).

    ``normalization_state`` (from a checkpoint) is used instead of recomputing the standardization.
    """
    store = open_store(config.store)
    config, temporal_notes = temporal_stream(store, config)
    for note in temporal_notes:
        log.warning("%s", note)
    streams = model_streams(config)
    channels, size = check_store(store, config, streams)
    try:
        make_config(MODELS[config.model], channels=channels, size=size, classes=len(store.classes),
                    **config.model_args)
    except TypeError as err:
        raise ConfigError(str(err)) from None
    selection, config, unfit, selected_notes = select_videos(store, config, streams)
    resolved, notes = resolve(config, [v.n_frames for v in selection.train])
    notes += selected_notes
    for note in notes:
        log.info("%s", note)
    notes += temporal_notes  # logged as a warning above
    every = selection.train + selection.val + selection.test
    multi_label = store.multi_label  # declared by the dataset adapter, stored at extraction
    clip = resolved.policy()
    device = pick_device(resolved.device)
    model, warned = build_run_model(resolved, store, channels, size, device)
    notes += warned
    optimizer = make_optimizer(resolved, model)

    reader = open_reader(resolved, store, every, streams)
    if normalization_state is not None:
        normalization = Normalization.from_state(normalization_state)
    elif resolved.normalize:
        normalization = compute_normalization(reader, selection.train, streams, resolved.norm_videos,
                                              resolved.standardize)
    else:
        normalization = None
    classes = len(store.classes)
    workers = resolved.workers if reader.from_store else 0  # cached clips are a memory copy away

    def dataset(kind, videos):
        return kind(reader, videos, streams, clip, targets_for(videos, classes, multi_label), normalization)

    train_dataset = dataset(ClipDataset, selection.train)
    val_dataset = dataset(VideoDataset, selection.val)
    test_dataset = dataset(VideoDataset, selection.test)
    loader = EpochLoader(train_dataset, clip, seed=resolved.seed, batch_size=resolved.batch_size, workers=workers,
                         videos=resolved.shuffle_videos, device=device, ahead=BATCHES_AHEAD if device == "cuda" else 0)
    val_loader = (make_loader(val_dataset, batch_size=None, sampler=None, workers=min(workers, len(selection.val)))
                  if selection.val else None)
    return Setup(resolved, store, selection, streams, clip, multi_label, model, optimizer, device, train_dataset,
                 val_dataset, test_dataset, loader, val_loader, notes, unfit)
