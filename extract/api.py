"""The extraction stage's programmatic API: :func:`extract_dataset` (what ``python -m glimpse.extract`` runs).

Two frozen values describe a run: :class:`FeatureRequest`, everything that decides the stored features (it becomes
the :class:`~glimpse.extract.config.ExtractConfig` whose hash names the store), and :class:`RunOptions`, where the
store goes and how the work runs (workers, device, scheduler), which never changes a value. Options that do not fit
raise :class:`glimpse.errors.OptionError`; the command line turns it into a usage error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glimpse.cluster import dask_client, parse_gpus, plan_cluster, visible_gpus
from glimpse.errors import GlimpseError, OptionError
from glimpse.extract.backbones import BACKBONES, BackboneError, backbone_spec, weights_identity
from glimpse.extract.config import Calibration, ExtractConfig, Outcome, Runtime, WeightsRef, default_streams
from glimpse.extract.datasets import Dataset, load_dataset, takes
from glimpse.extract.flow import FLOW_METHODS
from glimpse.extract.flow_stack import check_flow_weights
from glimpse.extract.pipeline import Summary, device_kind, prepare_store, run_extraction
from glimpse.extract.streams import plan_streams
from glimpse.extract.video_backbones import VideoBackboneSpec, check_clip, clip_grid
from glimpse.files import fingerprint
from glimpse.store import open_store
from glimpse.store.catalog import is_store
from glimpse.store.claims import CLAIMS, FLOCK, SCHEDULER, claims_on, flock_unsupported
from glimpse.store.layout import config_hash
from glimpse.store.schema import FAILED, STREAMS

log = logging.getLogger("extract")

#: Frames of the first video that random-init batch norm is calibrated on (see extract.backbones).
CALIBRATION_FRAMES = 8

#: The flow choices of the command line: none, or a method of extract.flow.
FLOW_CHOICES = ("none", *FLOW_METHODS)


@dataclass(frozen=True)
class FeatureRequest:
    """What decides the stored features, as a user names it: the dataset, its sampling, the backbone and its weights
    (``imagenet``, ``none`` or a state_dict file), the flow method and the streams."""

    dataset: str
    root: str
    seed: int = 0  # of the dataset's random protocol splits (ucf11, ucfsports)
    frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    clip_frames: int | None = None  # a video backbone's frames per clip (None: its own, 16)
    clip_stride: int | None = None  # frames from one clip's start to the next (None: clip_frames, clips side by side)
    size: int | None = None  # None: the backbone's input size
    backbone: str = "googlenet"  # a registered backbone, or torchvision:NAME (with a layer)
    layer: str | None = None  # the node to cut the backbone at; None: its registered layer
    weights: str = "imagenet"
    flow: str = "none"
    streams: tuple[str, ...] | None = None  # registry names; None: rgb, and flow and flow_cnn with a flow method
    flow_weights: str | None = None  # None: the flow-stream CNN is the rgb backbone (flow_stack: cross-modality)
    raft_weights: str = "none"
    flow_size: int | None = None
    flow_stack: int = 10  # flow fields per flow_stack input
    classes: tuple[str, ...] | None = None  # a subset of the dataset's classes (None: all)


@dataclass(frozen=True)
class RunOptions:
    """Where the store goes (``out``, or a ``lab`` root that names it by its config) and how the extraction runs."""

    out: str | None = None
    lab: str | None = None
    device: str = "auto"
    gpus: str | int | None = None
    batch_size: int = 32
    workers: int | None = None
    sequential: bool = False
    group: int | None = None
    decode_threads: int | None = None  # per worker; None: the cores each worker has
    scheduler: str | None = None
    codec: str | None = None
    claims: str = "auto"  # where videos are claimed (store.claims.CLAIMS): auto, flock, or the Dask scheduler
    overwrite: bool = False
    other_device: bool = False  # resume (or repair) a store on another kind of device than it was extracted on
    progress: bool = False
    verbose: bool = False  # Dask's own log lines


def lab_store_path(lab: str | os.PathLike, config: ExtractConfig) -> Path:
    """Where a lab root keeps the store of ``config``: LAB/<dataset>/<backbone>-<config hash> (torchvision:NAME as
    torchvision-NAME)."""
    return Path(lab) / config.dataset / f"{config.backbone.replace(':', '-')}-{config_hash(config.to_dict())}"


class Progress:
    """A tqdm bar on a terminal (videos done / failed, frames per second, ETA), log lines otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.failed, self.frames = total, 0, 0, 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="video", desc="extract", dynamic_ncols=True)

    def __call__(self, outcome: Outcome) -> None:
        self.frames += outcome.frames
        if outcome.status != FAILED:
            self.done += 1
        else:
            self.failed += 1
        if self.bar is not None:
            rate = self.frames / max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix(done=self.done, failed=self.failed, fps=f"{rate:.1f}")
            self.bar.update(1)
        else:
            log.info("%d/%d videos (%d failed): %s %s", self.done + self.failed, self.total, self.failed,
                     outcome.id, outcome.status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def select_streams(names: tuple[str, ...] | None, config: ExtractConfig) -> ExtractConfig:
    """``config`` with the streams ``names`` selects, in registry order (None, or the default set of
    ``config.flow``: left to the default); an OptionError names an unknown stream or one ``config`` cannot extract."""
    if names is None:
        return config
    unknown = [name for name in names if name not in STREAMS]
    if unknown or not names:
        raise OptionError(f"unknown stream {(unknown or [''])[0]!r}; streams are {', '.join(STREAMS)}", "--streams")
    specs = tuple(spec for name, spec in STREAMS.items() if name in names)
    try:
        plan_streams(specs, config)
    except ValueError as err:
        raise OptionError(str(err), "--streams") from None
    chosen = tuple(spec.name for spec in specs)
    return config if chosen == default_streams(config.flow) else dataclasses.replace(config, streams=specs)


def restrict_classes(dataset: Dataset, names: tuple[str, ...] | None) -> Dataset:
    """``dataset`` with only the videos of classes ``names`` (in that order: labels index it); a multi-label video
    keeps the labels among them, and is left out when it has none."""
    if names is None:
        return dataset
    unknown = [name for name in names if name not in dataset.classes]
    if unknown or not names or len(set(names)) != len(names):
        raise OptionError(f"{', '.join(unknown) or 'no class or a repeated one'}: choose among the classes of "
                          f"{dataset.name}: {', '.join(dataset.classes)}", "--classes")
    index = {dataset.classes.index(name): new for new, name in enumerate(names)}
    videos = tuple(dataclasses.replace(v, labels=tuple(index[label] for label in v.labels if label in index))
                   for v in dataset.videos if any(label in index for label in v.labels))
    kept = {v.id for v in videos}
    return dataclasses.replace(dataset, classes=tuple(names), videos=videos,
                               missing=tuple(vid for vid in dataset.missing if vid in kept))


def fingerprinted(dataset: Dataset) -> Dataset:
    """``dataset`` with each video's source fingerprint (:func:`glimpse.files.fingerprint`) in its record."""
    return dataclasses.replace(dataset, videos=tuple(dataclasses.replace(v, fingerprint=fingerprint(v.path))
                                                     for v in dataset.videos))


def manifest_digest(dataset: Dataset) -> str:
    """A digest of what the store of ``dataset`` holds, the features aside: its classes, and each video's id, labels,
    splits, group and source fingerprint (another dataset, another split seed or a changed file: another digest)."""
    rows = [[v.id, list(v.labels), dict(sorted(v.splits.items())), v.group, v.fingerprint]
            for v in sorted(dataset.videos, key=lambda v: v.id)]
    canonical = json.dumps({"classes": list(dataset.classes), "videos": rows}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def flow_weights_of(request: FeatureRequest) -> tuple[str | None, WeightsRef | None]:
    """``--flow-weights`` as (the flow_cnn network's weights, the flow_stack network's file): the flow_stack network's
    when that stream is extracted (a 2L-channel state_dict: it cannot also be flow_cnn's), else flow_cnn's."""
    streams = request.streams or ()
    if request.flow_weights is None or "flow_stack" not in streams:
        return request.flow_weights, None
    if "flow_cnn" in streams:
        raise OptionError("--flow-weights with both flow_cnn and flow_stack: the file is the stacked-flow network's "
                          "(2 x --flow-stack input channels); extract flow_cnn in another store", "--flow-weights")
    if not Path(request.flow_weights).is_file():
        raise OptionError(f"{request.flow_weights}: no such file; flow_stack's --flow-weights is a state_dict of a "
                          "flow-trained network (python -m glimpse.train flownet writes one)", "--flow-weights")
    try:
        check_flow_weights(request.flow_weights, request.backbone, request.layer,
                           request.size or backbone_spec(request.backbone, request.layer).size, request.flow_stack)
    except ValueError as err:
        raise OptionError(str(err), "--flow-weights") from None
    return None, WeightsRef(weights_identity(request.flow_weights), request.flow_weights)


def resolve_config(request: FeatureRequest, dataset: Dataset) -> ExtractConfig:
    """The :class:`ExtractConfig` ``request`` asks for on ``dataset`` (fingerprinted): the backbone's node (recorded
    when it is not the registered one), weights by identity, the backbone's input size, the calibration video of
    random weights (the first present video), the manifest's digest."""
    try:
        spec = backbone_spec(request.backbone, request.layer)
    except BackboneError as err:
        raise OptionError(str(err), "--layer" if request.layer else "--backbone") from None
    if request.flow not in FLOW_CHOICES:
        raise OptionError(f"unknown flow method {request.flow!r}; choose from {', '.join(FLOW_CHOICES)}", "--flow")
    if request.frames is not None and request.fps is not None:
        raise OptionError("--frames and --fps are exclusive: N equally spaced frames, or a fixed frame rate")
    clips = resolve_clips(request, spec)
    present = sorted((r for r in dataset.videos if r.id not in set(dataset.missing)), key=lambda r: r.id)
    calibration = None
    if request.weights == "none" and present:
        calibration = Calibration(present[0].id, CALIBRATION_FRAMES, present[0].path)
    flow_weights, stack_weights = flow_weights_of(request)
    config = ExtractConfig(
        dataset=request.dataset, backbone=request.backbone,
        layer=None if spec == BACKBONES.get(request.backbone) else spec.layer,  # a registered layer is no option
        weights=WeightsRef(weights_identity(request.weights, request.backbone), request.weights),
        size=request.size or spec.size, frames=request.frames, fps=request.fps,
        max_frames=request.max_frames, clip_frames=clips[0], clip_stride=clips[1], flow=request.flow,
        flow_cnn_weights=None if flow_weights is None else WeightsRef(weights_identity(flow_weights, request.backbone),
                                                                      flow_weights),
        raft_weights=(WeightsRef(weights_identity(request.raft_weights), request.raft_weights)
                      if request.flow == "raft" else WeightsRef("none")),
        flow_size=request.flow_size, flow_stack=request.flow_stack, flow_stack_weights=stack_weights,
        calibration=calibration, manifest=manifest_digest(dataset),
    )
    return select_streams(request.streams, config)


def resolve_clips(request: FeatureRequest, spec: Any) -> tuple[int | None, int | None]:
    """(clip_frames, clip_stride) of ``request``: a video backbone's, defaults filled in (its 16 frames, clips side by
    side), or (None, None) for a 2D backbone; an OptionError where they do not fit the backbone or its streams."""
    asked = request.clip_frames is not None or request.clip_stride is not None
    if not isinstance(spec, VideoBackboneSpec):
        if asked:
            raise OptionError(f"--clip-frames and --clip-stride are for video backbones; {spec.name} takes frames",
                              "--clip-frames")
        return None, None
    if request.layer not in (None, spec.layer):
        raise OptionError(f"{spec.name} is cut at {spec.layer} (its grid per clip); no other node", "--layer")
    if request.flow != "none" or (request.streams not in (None, ("rgb",))):
        raise OptionError(f"{spec.name} stores a step per clip: extract its rgb stream alone (the flow streams "
                          "have a step per frame)", "--streams" if request.streams else "--flow")
    frames = spec.clip if request.clip_frames is None else request.clip_frames
    stride = frames if request.clip_stride is None else request.clip_stride
    why = check_clip(spec, frames, stride)
    if why:
        raise OptionError(why, "--clip-frames")
    try:
        clip_grid(spec, request.size or spec.size, frames)
    except BackboneError as err:
        raise OptionError(str(err), "--size") from None
    return frames, stride


class NoCUDA(GlimpseError, RuntimeError):
    """``--device cuda`` where torch cannot use CUDA: refused before anything is written."""


def check_cuda() -> None:
    """Refuse ``--device cuda`` in one line when torch cannot use a CUDA device here (no GPU, no driver, or a driver
    older than the one this torch build needs)."""
    try:
        torch.zeros(1, device="cuda")
    except (RuntimeError, AssertionError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NoCUDA(f"--device cuda: torch {torch.__version__} cannot use a CUDA device here ({reason}); "
                     "run with --device cpu, or on a machine with a GPU and a recent driver") from None


def check_same_device(out: str, device: str) -> None:
    """Refuse to go on with a store extracted on another kind of device (CPU and GPU convolutions differ in the last
    bits: one store would mix both) unless asked (``--other-device``)."""
    recorded = open_store(out).metadata.versions.get("device")
    if recorded is not None and recorded != device_kind(device):
        raise OptionError(f"{out}: was extracted on {recorded}, this run computes on {device_kind(device)}: its videos "
                          f"would mix {recorded} and {device_kind(device)} features; run on {recorded}, or pass "
                          "--other-device to mix them anyway", "--device")


def resolve_claims(choice: str, out: str) -> str:
    """Where this run claims videos: ``choice`` (store.claims.CLAIMS), auto as flock where it works on the store's
    file system, else the Dask scheduler (said in one log line)."""
    if choice not in CLAIMS:
        raise OptionError(f"unknown claims backend {choice!r}; choose from {', '.join(CLAIMS)}", "--claims")
    if choice != "auto":
        return choice
    why = flock_unsupported(out)
    if why is None:
        return FLOCK
    log.info("claims: %s, so videos are claimed on the Dask scheduler: only runs through this scheduler are kept "
             "apart (share one with --scheduler)", why)
    return SCHEDULER


def extract_dataset(request: FeatureRequest, options: RunOptions, client: Any = None) -> Summary:
    """Extract ``request``'s dataset into the store ``options`` names (created, or resumed): one Dask task per few
    videos on ``client``, or on the cluster ``options`` asks for (a LocalCluster, or ``options.scheduler``)."""
    gpus = parse_gpus(options.gpus)
    device = options.device
    if device == "auto":
        device = "cuda" if gpus or torch.cuda.is_available() else "cpu"
    if gpus and device != "cuda":
        raise OptionError(f"--gpus runs on CUDA devices; it does not go with --device {device}")
    if (options.out is None) == (options.lab is None):
        raise OptionError("give exactly one of --out STORE and --lab ROOT")
    wanted = {"seed": request.seed, "classes": request.classes}
    dataset = load_dataset(request.dataset, request.root,
                           **{k: v for k, v in wanted.items() if takes(request.dataset, k) and v is not None})
    dataset = fingerprinted(restrict_classes(dataset, request.classes))
    config = resolve_config(request, dataset)
    out = options.out or str(lab_store_path(options.lab or "", config))
    if options.lab is not None:
        log.info("store for this config: %s (%s)", out, "exists: finishing what is missing" if is_store(out) else "new")
    if is_store(out) and not options.other_device and not options.overwrite:
        check_same_device(out, device)
    source = {"root": str(Path(request.root).resolve()), "weights": request.weights,
              "flow_weights": request.flow_weights, "raft_weights": request.raft_weights if request.flow == "raft"
              else None, "seed": request.seed if takes(request.dataset, "seed") else None,
              "batch_size": options.batch_size}  # batches are padded to it: a repair must batch alike for the same bits
    cores = os.cpu_count() or 1
    # with --device cuda and no --gpus, a worker per visible GPU
    visible = visible_gpus() if gpus or (device == "cuda" and not options.workers) else 0
    plan = plan_cluster(options.workers, gpus or (-1 if device == "cuda" and not options.workers and visible else None),
                        cores, visible, default_workers=cores)
    if device == "cuda" and not (options.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or client):
        check_cuda()
    log.info("device: %s%s, %d decode threads per worker", device, " (torch sees no CUDA device)"
             if options.device == "auto" and device == "cpu" else "", options.decode_threads or plan.threads)
    runtime = Runtime(device=device, batch_size=options.batch_size, threads=plan.threads,
                      pipelined=not options.sequential, group=options.group, codec=options.codec,
                      decode_threads=options.decode_threads or plan.threads, claims=resolve_claims(options.claims, out))

    def prepare() -> Any:
        return prepare_store(out, config, dataset, overwrite=options.overwrite, source=source, codec=options.codec,
                             device=device)

    # with flock claims, the store is created (or reopened, or refused in one line) before any worker starts
    writer = prepare() if runtime.claims == FLOCK else None
    progress = Progress(len(dataset.videos), enabled=options.progress)

    def run(on: Any) -> Summary:
        with claims_on(on if runtime.claims == SCHEDULER else None):
            store = prepare() if writer is None else writer  # scheduler claims: created under the scheduler's lock
            return run_extraction(store, config, runtime, dataset, on, on_result=progress)

    try:
        if client is not None:
            return run(client)
        # a task whose worker dies twice (a decoder crash, not a lost machine) fails, not retried on every worker
        with dask_client(options.scheduler, plan, allowed_failures=1, verbose=options.verbose) as own:
            log.info("dask dashboard: %s", own.dashboard_link)
            return run(own)
    finally:
        progress.close()
