"""Fine-tuning HAN's temporal CNN on a store's raw flow: ``python -m glimpse.train flownet --store S --out F.pt``.

HAN (Sec. 4.2) fine-tunes two-stream VGG nets, the temporal one on stacked horizontal and vertical flow with SGD,
learning rate 1e-2 then 1e-3, momentum 0.9 (Simonyan & Zisserman's recipe). Here the network is the store's backbone
cut at its layer (:mod:`glimpse.extract.flow_stack`: a 2L-channel first layer, cross-modality initialisation from
the RGB weights), with a classifier on its globally average-pooled cube. Each sample is a training video drawn
uniformly, then a step of it uniformly, and the stack of L flows starting there, scaled as extraction scales it
(no crop or flip augmentation). The iterations follow the two-stream paper's 20,000 at batch 256 on UCF-101's 9,537
training videos, scaled: ``20,000 x (256 / batch) x min(1, training videos / 9,537)``, the drop to 1e-3 at 70 %.
Batch-norm statistics are recomputed on training stacks at the end (a network with batch norm trains on batch
statistics). What it writes is the cut network's ``state_dict``, which ``--flow-weights`` takes with flow_stack.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from glimpse.extract.flow_stack import DEFAULT_STACK, flow_input, initial_flow_body, recompute_batchnorm, stack_indices
from glimpse.store import Store, open_store
from glimpse.train.clips import select
from glimpse.train.config import ConfigError

log = logging.getLogger("train.flownet")

#: the two-stream paper's temporal net: 20,000 fine-tuning iterations at batch 256 on UCF-101 split 1
PAPER_ITERATIONS, PAPER_BATCH, PAPER_VIDEOS = 20_000, 256, 9_537
#: SGD as HAN: 1e-2 then 1e-3 at DROP_AT of the iterations, momentum 0.9, the two-stream nets' weight decay
LR, LR_AFTER, DROP_AT, MOMENTUM, WEIGHT_DECAY = 1e-2, 1e-3, 0.7, 0.9, 5e-4
#: training stacks the batch-norm statistics are recomputed on
BN_STACKS = 256
#: fixed training stacks the loss is measured on before and after (a seed of its own)
PROBE_STACKS = 32


def iterations_for(batch_size: int, train_videos: int) -> tuple[int, int]:
    """(iterations, the step the rate drops at): 20,000 x (256 / batch) x min(1, videos / 9,537), drop at 70 %."""
    total = max(1, round(PAPER_ITERATIONS * (PAPER_BATCH / batch_size) * min(1.0, train_videos / PAPER_VIDEOS)))
    return total, round(DROP_AT * total)


@dataclass(frozen=True)
class FlownetRequest:
    """What ``flownet`` fine-tunes: the store's raw flow of ``split``'s training videos into ``out``."""

    store: str
    out: str
    split: str = "1"
    batch_size: int = 64
    iterations: int | None = None  # None: iterations_for's rule
    flow_stack: int | None = None  # None: the store's flow_stack length, else 10
    weights: str | None = None  # RGB weights of the cross-modality start; None: the store's
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class FlownetResult:
    """What a fine-tuning did: its iterations and drop, the loss on fixed training stacks before and after (eval
    mode, as extraction runs the net), where it wrote."""

    iterations: int
    drop: int
    loss_before: float
    loss_after: float
    out: str
    log: str
    batchnorm: bool

    def summary(self) -> str:
        norm = "; batch-norm statistics recomputed" if self.batchnorm else ""
        return (f"flownet: {self.iterations} iterations (lr 1e-2, 1e-3 from {self.drop}): loss on {PROBE_STACKS} "
                f"training stacks {self.loss_before:.4f} -> {self.loss_after:.4f}{norm} -> {self.out}")


class FlowSamples:
    """Stacks of L flows of a store's videos, drawn as the module docstring says."""

    def __init__(self, store: Store, videos: tuple, length: int, size: int, seed: int) -> None:
        self.store, self.videos, self.length, self.size = store, videos, length, size
        self.random = random.Random(seed)

    def stack(self, video) -> Tensor:
        """One stack (2L, h, w) of ``video`` from a random step."""
        step = self.random.randrange(video.n_frames)
        steps = stack_indices(video.n_frames, self.length)[step]  # (L,)
        flow = self.store.read(video.id, "flow", frames=sorted(set(steps.tolist())))  # (u, 2, h, w)
        position = {s: i for i, s in enumerate(sorted(set(steps.tolist())))}
        return torch.from_numpy(flow[[position[s] for s in steps]].astype(np.float32)).flatten(0, 1)  # (2L, h, w)

    def batch(self, size: int) -> tuple[Tensor, Tensor]:
        """(size, 2L, S, S) network inputs and (size,) class labels."""
        videos = [self.random.choice(self.videos) for _ in range(size)]
        images = torch.cat([flow_input(self.stack(v)[None], self.size) for v in videos])  # (B, 2L, S, S)
        return images, torch.tensor([v.label for v in videos])


def flownet_settings(store: Store, request: FlownetRequest) -> tuple[str, str | None, int, int, str]:
    """(backbone, layer, size, L, RGB weights) of the store's extraction, overridden by the request."""
    config = store.config
    if "flow" not in store.streams:
        raise ConfigError(f"{store.path}: holds no raw flow stream (it has {', '.join(sorted(store.streams))}); "
                          "extract with --flow tvl1 --streams rgb,flow,flow_stack")
    length = request.flow_stack or int(config.get("flow_stack", {}).get("length", DEFAULT_STACK))
    weights = request.weights or store.metadata.source.get("weights") or "imagenet"
    return config["backbone"], config.get("layer"), int(config["size"]), length, str(weights)


def probe_loss(model: nn.ModuleDict, probe: tuple[Tensor, Tensor], device: str) -> float:
    """Mean cross-entropy of ``model`` (eval mode, as extraction runs it) on fixed stacks; leaves it training."""
    model.eval()
    with torch.no_grad():
        features = model["body"](probe[0].to(device))["features"]  # (n, C, K, K)
        loss = nn.functional.cross_entropy(model["head"](features.mean((2, 3))), probe[1].to(device))
    model.train()
    return float(loss)


def finetune_flownet(request: FlownetRequest) -> FlownetResult:
    """Fine-tune the temporal CNN on ``request.store``'s raw flow of its training split; write its state_dict."""
    store = open_store(request.store)
    backbone, layer, size, length, weights = flownet_settings(store, request)
    try:
        videos = select(store, request.split, 0.0, request.seed).train
    except ValueError as err:
        raise ConfigError(str(err)) from None
    total, drop = iterations_for(request.batch_size, len(videos))
    if request.iterations is not None:
        total, drop = request.iterations, round(DROP_AT * request.iterations)
    log_path = Path(request.out).with_suffix(".log")
    Path(request.out).parent.mkdir(parents=True, exist_ok=True)
    lines = [f"flownet: {backbone} cut at {layer or 'its layer'}, {length} stacked flows (2L = {2 * length} input "
             f"channels) at {size} px, {len(videos)} training videos of split {request.split}, batch "
             f"{request.batch_size}",
             f"iterations: {total} (rule: 20,000 x (256 / batch) x min(1, training videos / 9,537) = "
             f"{iterations_for(request.batch_size, len(videos))[0]}"
             f"{'; set by --iterations' if request.iterations is not None else ''}); SGD lr 1e-2, 1e-3 from "
             f"iteration {drop} (70 %), momentum 0.9, weight decay 5e-4"]
    device = request.device if request.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(request.seed)
    body, identity = initial_flow_body(backbone, layer, size, length, weights)
    lines.append(f"start: {identity}")
    for line in lines:
        log.info("%s", line)
    channels = int(body(torch.zeros(2, 2 * length, size, size))["features"].shape[1])
    head = nn.Linear(channels, len(store.classes))
    model = nn.ModuleDict({"body": body, "head": head}).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    samples = FlowSamples(store, videos, length, size, request.seed)
    probe = FlowSamples(store, videos, length, size, request.seed + 1).batch(PROBE_STACKS)
    before = probe_loss(model, probe, device)
    with open(log_path, "w") as out:
        out.write("\n".join(lines) + "\n")
        for step in range(total):
            if step == drop:
                for group in optimizer.param_groups:
                    group["lr"] = LR_AFTER
            images, labels = samples.batch(request.batch_size)
            features = model["body"](images.to(device))["features"]  # (B, C, K, K)
            loss = nn.functional.cross_entropy(model["head"](features.mean((2, 3))), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out.write(f"iteration {step + 1} lr {optimizer.param_groups[0]['lr']:g} loss {loss.item():.5f}\n")
        stacks = samples.batch(min(BN_STACKS, max(2, request.batch_size * 4)))[0].to(device)
        body = model["body"]
        recomputed = recompute_batchnorm(body, stacks)
        result = FlownetResult(total, drop, before, probe_loss(model, probe, device), request.out, str(log_path),
                               recomputed)
        out.write(result.summary() + "\n")
    torch.save({k: v.cpu() for k, v in body.state_dict().items()}, request.out)
    return result


def request_of(**options) -> FlownetRequest:
    """The request of the command line's options (those left unset keep their defaults)."""
    return dataclasses.replace(FlownetRequest(options.pop("store"), options.pop("out")),
                               **{k: v for k, v in options.items() if v is not None})
