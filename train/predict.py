"""Per-video predictions: every clip covering a video through the model, aggregated as its paper did.

Clip scores become a video's score by the run's aggregation (train/aggregation.py: "mean" as Sharma et al.,
"vote" as Quan et al.). The evaluation stage builds on :func:`predict_videos` and :func:`load_run`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from glimpse.store import Store, open_store
from glimpse.train.aggregation import aggregate
from glimpse.train.clips import role_videos
from glimpse.train.config import ConfigError
from glimpse.train.data import (
    FeatureReader,
    Normalization,
    VideoDataset,
    model_inputs,
    targets_for,
    unfit_videos,
)
from glimpse.train.loader import make_loader
from glimpse.train.losses import clip_loss
from glimpse.train.metrics import average_precisions, multi_hot
from glimpse.train.models import build_model
from glimpse.train.run import RunDir
from glimpse.train.sampling import Policy, Windows
from glimpse.train.setup import pick_device


@dataclass
class VideoPrediction:
    """One video's outcome: ``scores`` (classes,) aggregated, ``predicted`` the top class.

    ``clip_logits`` is (clips, T', classes) as the model gave them, ``attention`` (clips, T, K, K)
    or None, ``loss`` the mean over clips of the per-clip training loss without penalties.
    """

    id: str
    labels: tuple[int, ...]
    scores: np.ndarray
    predicted: int
    clip_logits: np.ndarray
    attention: np.ndarray | None
    loss: float


@torch.no_grad()
def predict_videos(model: nn.Module, dataset: VideoDataset, *, aggregation: str, multi_label: bool,
                   device: str = "cpu", workers: int = 0, max_clips: int = 64,
                   loader=None) -> Iterator[VideoPrediction]:
    """Predict every video of ``dataset`` in order (model put in eval mode), ``max_clips`` clips per forward."""
    model.eval()
    loader = loader or make_loader(dataset, batch_size=None, sampler=None, workers=workers)
    for cubes, target, index in loader:
        logits, maps = [], []
        for lo in range(0, cubes[0].shape[0], max_clips):
            out = model(*model_inputs([c[lo : lo + max_clips] for c in cubes], dataset, device))  # (clips, T, ...)
            logits.append(out.logits.float().cpu())  # (clips, T', classes)
            if out.attention is not None:
                maps.append(out.attention.float().cpu())  # (clips, T, K, K)
        logits = torch.cat(logits)  # (clips, T', classes)
        targets = target.unsqueeze(0).expand(logits.shape[0], *target.shape)  # (clips,) or (clips, classes)
        loss = float(clip_loss(logits, targets, multi_label).mean())
        scores, predicted = aggregate(logits, aggregation, multi_label, getattr(model.config, "last_n", 0))
        video = dataset.videos[int(index)]
        yield VideoPrediction(video.id, video.labels, scores, predicted, logits.numpy(),
                              torch.cat(maps).numpy() if maps else None, loss)


def score(predictions: list[VideoPrediction], classes: int, multi_label: bool) -> dict[str, float]:
    """{"accuracy", "loss", and for multi-label runs "map"}; "score" is the one model selection uses."""
    if not predictions:
        return {"accuracy": float("nan"), "loss": float("nan"), "score": float("nan")}
    accuracy = float(np.mean([p.predicted in p.labels if multi_label else p.predicted == p.labels[0]
                              for p in predictions]))
    result = {"accuracy": accuracy, "loss": float(np.mean([p.loss for p in predictions])), "score": accuracy}
    if multi_label:
        truth = multi_hot([p.labels for p in predictions], classes)  # (N, classes)
        _aps, mean_ap = average_precisions(truth, np.stack([p.scores for p in predictions]))
        result["map"] = result["score"] = float("nan") if mean_ap is None else mean_ap
    return result


@dataclass
class LoadedRun:
    """A trained model with everything needed to predict like its run did."""

    model: nn.Module
    name: str
    store: str
    config_hash: str
    clip: Policy
    aggregation: str
    normalization: Normalization | None
    multi_label: bool
    classes: tuple[str, ...]
    streams: tuple[str, ...]
    checkpoint: dict
    split: str
    device: str


def open_run_store(run_dir: str | Path, recorded: str, config_hash: str, store: str | Path | None = None) -> Store:
    """The store a run reads: ``store`` (where it is now, after a move) or the one the run recorded; refused in one
    line when its config hash is not the run's (other features), or when the recorded one is gone."""
    location = str(store) if store is not None else recorded
    if store is None and "://" not in recorded and not Path(recorded).exists():
        raise ConfigError(f"{run_dir}: its store {recorded} is not there; if it moved, give --store NEW_PATH")
    found = open_store(location if "://" in location else str(Path(location).resolve()))
    if found.config_hash != config_hash:
        raise ConfigError(f"{found.path}: config hash {found.config_hash}, but the run {run_dir} was trained on "
                          f"{recorded} of config hash {config_hash}: not the same features")
    return found


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild a run's model from its ``which`` checkpoint (weights_only) and its config.json, on ``device``
    ("auto": the GPU when one is visible).

    The checkpoint is read on the CPU (its standardization stays numpy), then the model is moved to ``device``.
    """
    device = pick_device(device)
    run = RunDir(run_dir)
    config = run.config()
    ckpt = run.load_checkpoint(which, map_location="cpu")
    model = build_model(ckpt["model"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    train = config["train"]
    sampling = config["data"].get("sampling")  # runs from before clip policies tested on T-frame blocks
    clip = Policy.from_dict(sampling) if sampling else Windows(train["frames"])
    return LoadedRun(model, ckpt["model"], config["store"]["path"], config["store"]["config_hash"], clip,
                     train["aggregation"], Normalization.from_state(ckpt.get("normalization")),
                     config["data"]["multi_label"], tuple(config["store"]["classes"]),
                     tuple(config["data"]["streams"]), ckpt, train["split"], device)


def predict_run(run_dir: str | Path, role: str = "test", which: str = "best", device: str = "cpu",
                store: str | None = None, loaded: LoadedRun | None = None) -> Iterator[VideoPrediction]:
    """Predictions of a trained run on the done videos of its split's ``role`` ("test", "train" or "unused").

    ``loaded``: the run as :func:`load_run` already gave it (on ``device``), so it is not loaded twice; ``store``:
    where the run's store is now, when it moved (see :func:`open_run_store`).
    """
    loaded = loaded or load_run(run_dir, which, device)
    s = open_run_store(run_dir, loaded.store, loaded.config_hash, store)
    videos = role_videos(s, loaded.split, role)
    unfit = unfit_videos(s, videos, loaded.streams)  # each logged there
    videos = [v for v in videos if v.id not in unfit]
    dataset = VideoDataset(FeatureReader(s.path).open(videos, loaded.streams), videos, loaded.streams, loaded.clip,
                           targets_for(videos, len(loaded.classes), loaded.multi_label), loaded.normalization)
    predictions = predict_videos(loaded.model, dataset, aggregation=loaded.aggregation,
                                 multi_label=loaded.multi_label, device=device)
    yield from tqdm(predictions, total=len(videos), unit="video", desc=f"predict {role}", dynamic_ncols=True,
                    disable=not sys.stderr.isatty(), leave=False)
