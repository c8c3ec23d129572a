"""The training loop: epochs of seeded clips, validation by video, best / last checkpoints, early stopping,
resume after a kill, a clear stop on a non-finite loss, and the final test evaluation.

    from glimpse.train.loop import train_model
    result = train_model("stores/ucf11", "regattn", "runs/ucf11-regattn", epochs=20, model_args={"hidden": 256})
    result.test_accuracy

Same seed -> same metrics: the model is initialised under ``seed``, each epoch's clips come from
(seed, epoch) and its dropout from a torch seed of (seed, epoch). A checkpoint taken inside an epoch
(``checkpoint_every``) also holds the torch random state and the epoch's running sums, so a resumed
run continues exactly where the killed one was.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from glimpse.errors import GlimpseError
from glimpse.train.config import RESUMABLE, ConfigError, ResolvedConfig, TrainConfig
from glimpse.train.data import model_inputs
from glimpse.train.losses import clip_loss, model_loss
from glimpse.train.predict import open_run_store, predict_videos, score
from glimpse.train.run import (
    RunDir,
    RunFileError,
    TensorBoard,
    atomic_write_text,
    pack_history,
    rng_state,
    set_rng_state,
    store_location,
    unpack_history,
)
from glimpse.train.setup import Setup, prepare

#: the progress bar's loss and accuracy are read from the device at most this often (each read waits for the GPU)
PROGRESS_SECONDS = 1.0
#: curves.png is redrawn at most this often (and after the last epoch): drawing costs more than a small store's
#: epoch
PLOT_SECONDS = 60.0

log = logging.getLogger("train")


class NonFiniteLossError(GlimpseError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class RunInterrupted(GlimpseError):
    """Training was interrupted (Ctrl-C); the message says how to continue."""


@dataclass
class EpochSums:
    """The running sums of the epoch in progress (a checkpoint inside an epoch keeps them)."""

    loss: float = 0.0  # summed over clips
    hits: int = 0
    clips: int = 0
    data_s: float = 0.0  # waiting for batches
    compute_s: float = 0.0


@dataclass
class LoopState:
    """Where training is: the next epoch and batch, optimizer steps taken, the epochs' metrics, the best epoch, why
    it stopped; ``partial`` and ``rng`` when checkpointed inside an epoch."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None  # {"epoch", "score", "loss"} of the best epoch so far
    stopped: str | None = None  # completed, early_stopping
    partial: EpochSums | None = None
    rng: dict[str, Any] | None = None
    plotted: float = 0.0  # when curves.png was last drawn (not checkpointed)

    def to_checkpoint(self) -> dict[str, Any]:
        """The state's share of a checkpoint: plain types and tensors only."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "best": self.best,
                "stopped": self.stopped, "partial": None if self.partial is None else asdict(self.partial),
                "rng": self.rng, "history": pack_history(self.history)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> LoopState:
        """The state a checkpoint holds."""
        partial = None if ckpt["partial"] is None else EpochSums(**ckpt["partial"])
        return cls(ckpt["epoch"], ckpt["batch"], ckpt["step"], unpack_history(ckpt["history"]), ckpt["best"],
                   ckpt["stopped"], partial, ckpt["rng"])


@dataclass(frozen=True)
class RunResult:
    """The outcome of a run: its best validation score, its test scores and why it stopped."""

    run_dir: str
    model: str
    epochs: int
    best_epoch: int
    best_val_score: float | None
    test_accuracy: float
    test_score: float
    metric: str
    stopped: str

    def summary(self) -> str:
        """One line for the terminal."""
        val = "n/a" if self.best_val_score is None else f"{self.best_val_score:.3f}"
        return (f"{self.model}: {self.stopped} after {self.epochs} epochs; best epoch {self.best_epoch} "
                f"(validation {self.metric} {val}); test {self.metric} {self.test_score:.3f} -> {self.run_dir}")


def train_model(store: str | Path, model: str, out: str | Path, **options: Any) -> RunResult:
    """Train ``model`` on ``store`` into the new run directory ``out``; ``options`` are TrainConfig fields."""
    return run_training(TrainConfig(store=store_location(store), model=model, out=str(out), **options))


def resume_run(run_dir: str | Path, store: str | Path | None = None, **changes: Any) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint (a finished run just reports its result).

    ``store``: where the run's store is now, when it moved (its config hash must be the run's; config.json then
    records the new place). ``changes`` may set only fields in :data:`train.config.RESUMABLE` (e.g. more
    ``epochs``, another device).
    """
    run = RunDir(run_dir)
    recorded = run.config()
    saved = {"standardize": "mean_std", **recorded["train"]}  # a run from before --standardize: mean_std
    bad = sorted(set(changes) - set(RESUMABLE))
    if bad:
        raise ConfigError(f"--resume keeps what the run learns; only {', '.join(RESUMABLE)} may change, not "
                          f"{', '.join(bad)}")
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise RunFileError(f"{run.file('config.json')}: unknown training field(s) {', '.join(unknown)}: not a "
                           "config.json this glimpse wrote")
    try:
        config = TrainConfig(**{**saved, "out": str(run_dir)})
    except (TypeError, ValueError) as err:  # a field missing, or a value of the wrong kind
        raise RunFileError(f"{run.file('config.json')}: its training config is not valid ({err})") from None
    found = open_run_store(run.path, recorded["store"]["path"], recorded["store"]["config_hash"], store)
    if found.path != recorded["store"]["path"]:
        run.write_json("config.json", {**recorded, "train": {**saved, "store": found.path},
                                       "store": {**recorded["store"], "path": found.path}})
        run.event(f"store moved: {recorded['store']['path']} -> {found.path} (same config hash)")
        config = dataclasses.replace(config, store=found.path)
    return run_training(dataclasses.replace(config, **changes), resume=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch's dropout."""
    return int(np.random.SeedSequence([seed, epoch, 0xD40]).generate_state(1)[0])


def drop_step(config: ResolvedConfig, total: int) -> int:
    """The step at which the learning rate drops: lr_drop_step in a run of ``total`` steps that reaches it (CHAM's
    10,000 in a 12,000-step run), else 2/3 of the run (a run shortened by --epochs still drops); 0 for no drop."""
    if not config.lr_drop_step:
        return 0
    return config.lr_drop_step if config.lr_drop_step < total else max(1, 2 * total // 3)


def lr_at(config: ResolvedConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) in a run of ``total`` steps (see :func:`drop_step`)."""
    drop = drop_step(config, total)
    return config.lr_drop_to if drop and step >= drop and config.lr_drop_to is not None else config.lr


def batch_hits(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Clips whose mean prediction over steps is (one of) their label(s): a () int64 tensor on the logits' device."""
    predicted = logits.detach().float().softmax(-1).mean(1).argmax(-1)  # (B,)
    if multi_label:
        return target.gather(1, predicted[:, None]).sum().long()
    return (predicted == target).sum()


class Pending:
    """The sums of the steps taken since the last read, kept on the device so that a step never waits for it: read
    (one copy) when a value is printed, at a checkpoint and at the end of the epoch.

    ``bad`` is the index, among those steps, of the first non-finite loss (-1: none), ``bad_loss`` that loss."""

    def __init__(self, device: str | torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * clips
        self.hits = torch.zeros((), dtype=torch.int64, device=device)
        self.bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0  # steps since the last read (known on the host)

    def add(self, loss: torch.Tensor, hits: torch.Tensor, clips: int) -> None:
        """One step's () loss (its mean over ``clips``) and () hits, without a host sync."""
        loss = loss.detach().double()
        first = (self.bad < 0) & ~torch.isfinite(loss)
        self.bad = torch.where(first, self.steps, self.bad)
        self.bad_loss = torch.where(first, loss, self.bad_loss)
        self.loss += loss * clips
        self.hits += hits
        self.steps += 1

    def read(self) -> tuple[float, int, int, float]:
        """(loss sum, hits, index of the first non-finite loss or -1, that loss), in one copy to the host."""
        loss, hits, bad, bad_loss = torch.stack([self.loss, self.hits.double(), self.bad.double(),
                                                 self.bad_loss]).tolist()
        return loss, int(hits), int(bad), bad_loss


def settle(setup: Setup, run: RunDir, state: LoopState, sums: EpochSums, pending: Pending) -> Pending:
    """Fold the pending sums into ``sums`` (stopping the run at the first non-finite loss, naming its step); a fresh
    Pending to go on with."""
    loss, hits, bad, bad_loss = pending.read()
    if bad >= 0:
        back = pending.steps - bad  # the bad step was this many steps ago
        stop_nonfinite(setup, run, dataclasses.replace(state, step=state.step - back, batch=state.batch - back),
                       bad_loss)
    sums.loss += loss
    sums.hits += hits
    return Pending(setup.device)


def autocast(device: str | torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The training forward's precision context: bfloat16 autocast for ``amp`` bf16, nothing for none."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def finite_parameters(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite (nothing non-finite is ever written into a checkpoint)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run_training(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train (or resume) the run ``config`` describes; see the module docstring."""
    run = RunDir(config.out)
    ckpt = None
    with contextlib.ExitStack() as held:  # the run's lock, from the start (or the resume) to the end
        if resume:
            run.config()
            held.enter_context(run.lock())
            ckpt = run.resume_checkpoint()
        setup = prepare(config, ckpt["normalization"] if ckpt else None)
        config = setup.config
        if resume:
            run.event("resumed " + (f"at epoch {ckpt['epoch'] + 1} batch {ckpt['batch']} (step {ckpt['step']})"
                                    if ckpt else "from the start (no checkpoint yet)"))
        else:
            run.create({"train": config.to_dict(), **setup.describe()})
            held.enter_context(run.lock())
            run.event(f"started {config.model} on {config.store} split {config.split}: "
                      f"{len(setup.selection.train)} train / {len(setup.selection.val)} val / "
                      f"{len(setup.selection.test)} test videos")
            for note in setup.notes:
                run.event(f"note: {note}")
        state = restore(setup, ckpt)
        try:
            if state.stopped is None or state.epoch < config.epochs and state.stopped == "completed":
                state.stopped = None
                fit(setup, run, state)
        except KeyboardInterrupt:
            run.event(f"interrupted in epoch {state.epoch + 1}")
            raise RunInterrupted(f"{run.path}: interrupted in epoch {state.epoch + 1} of {config.epochs}; "
                                 f"continue with: python -m glimpse.train --resume {run.path}") from None
        return finish(setup, run, state)


def restore(setup: Setup, ckpt: dict | None) -> LoopState:
    """The loop's state: fresh, or taken from a checkpoint (model and optimizer loaded in place)."""
    if ckpt is None:
        return LoopState()
    setup.model.load_state_dict(ckpt["state_dict"])
    setup.optimizer.load_state_dict(ckpt["optimizer"])
    return LoopState.from_checkpoint(ckpt)


def checkpoint(setup: Setup, state: LoopState) -> dict[str, Any]:
    """The payload of a checkpoint: plain types and tensors only (torch.load(weights_only=True))."""
    norm = setup.train_dataset.normalization
    return {
        "model": setup.config.model,
        "config": dataclasses.asdict(setup.model.config),
        "state_dict": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "normalization": norm.to_state() if norm is not None else None,
        "train_config": setup.config.to_dict(),
        "store": {"path": setup.store.path, "config_hash": setup.store.config_hash},
        "classes": list(setup.store.classes),
        **state.to_checkpoint(),
    }


def save(setup: Setup, run: RunDir, state: LoopState, *which: str) -> None:
    """Write the checkpoints named in ``which``, refusing to save non-finite parameters."""
    if not finite_parameters(setup.model):
        raise NonFiniteLossError(f"{run.path}: parameters became NaN or infinite by step {state.step}; "
                                 f"last good checkpoint kept: {run.file('last.pt')}")
    run.save_checkpoint(checkpoint(setup, state), *which)


def fit(setup: Setup, run: RunDir, state: LoopState) -> None:
    """Train epochs state.epoch .. config.epochs - 1, validating and checkpointing after each."""
    config, model, optimizer = setup.config, setup.model, setup.optimizer
    B, batches = config.batch_size, setup.loader.batches
    tensorboard = TensorBoard(run, purge_step=state.epoch + 1)
    state.plotted = time.monotonic()  # curves after PLOT_SECONDS, then as often, and after the last epoch
    try:
        while state.epoch < config.epochs:
            epoch = state.epoch
            if state.batch:  # resumed inside the epoch
                set_rng_state(state.rng, setup.device)
                sums = dataclasses.replace(state.partial or EpochSums())
            else:
                torch.manual_seed(epoch_seed(config.seed, epoch))
                sums = EpochSums()
            setup.loader.set_epoch(epoch, skip=state.batch * B)
            model.train()
            bar = tqdm(total=batches, initial=state.batch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="batch", disable=not (config.progress and sys.stderr.isatty()), dynamic_ncols=True,
                       leave=True)  # not on a terminal: end_epoch's one line per epoch
            started = waited = drawn = time.perf_counter()
            pending = Pending(setup.device)
            for batch in setup.loader:
                got = time.perf_counter()
                sums.data_s += got - waited
                lr = lr_at(config, state.step, batches * config.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                target = batch.target.to(setup.device, non_blocking=True)
                with autocast(setup.device, config.amp):
                    out = model(*model_inputs(batch.cubes(), setup.train_dataset, setup.device))  # each (B, T, C, K, K)
                    if setup.multi_label:
                        loss = clip_loss(out.logits, target, True)  # (B,)
                        loss = (loss + sum(out.aux_losses.values())).mean() if out.aux_losses else loss.mean()
                    else:
                        loss = model_loss(out, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = target.shape[0]
                pending.add(loss, batch_hits(out.logits, target, setup.multi_label), n)
                state.step += 1
                state.batch += 1
                sums.clips += n
                waited = time.perf_counter()
                sums.compute_s += waited - got
                bar.update(1)
                if not bar.disable and waited - drawn >= PROGRESS_SECONDS:  # the only read inside an epoch's steps
                    loss_sum, hits, _, _ = pending.read()
                    bar.set_postfix(loss=f"{(sums.loss + loss_sum) / sums.clips:.3f}",
                                    acc=f"{(sums.hits + hits) / sums.clips:.3f}",
                                    clips_s=f"{sums.clips / max(waited - started, 1e-9):.1f}")
                    drawn = waited
                every = config.checkpoint_every
                if every and state.step % every == 0 and state.batch < batches:  # inside the epoch
                    pending = settle(setup, run, state, sums, pending)
                    save(setup, run, dataclasses.replace(state, partial=dataclasses.replace(sums),
                                                         rng=rng_state(setup.device)), "last")
            settle(setup, run, state, sums, pending)
            if sums.clips:  # the epoch's own figures on its finished bar
                bar.set_postfix(loss=f"{sums.loss / sums.clips:.3f}", acc=f"{sums.hits / sums.clips:.3f}",
                                clips_s=f"{sums.clips / max(time.perf_counter() - started, 1e-9):.1f}")
            bar.close()
            end_epoch(setup, run, state, sums, tensorboard)
            if state.stopped:
                break
    finally:
        tensorboard.close()


def end_epoch(setup: Setup, run: RunDir, state: LoopState, sums: EpochSums, tb: TensorBoard) -> None:
    """Validate, record the epoch's metrics, checkpoint last (and best), and decide on early stopping."""
    config = setup.config
    seconds = sums.data_s + sums.compute_s
    val = {"score": float("nan"), "loss": float("nan")}
    if setup.val_loader is not None:
        preds = list(predict_videos(setup.model, setup.val_dataset, aggregation=config.aggregation,
                                    multi_label=setup.multi_label, device=setup.device, loader=setup.val_loader))
        val = score(preds, len(setup.store.classes), setup.multi_label)
    epoch = state.epoch + 1
    total = setup.loader.batches * config.epochs
    row = {"epoch": epoch, "step": state.step, "lr": lr_at(config, state.step - 1, total),
           "train_loss": sums.loss / sums.clips, "train_acc": sums.hits / sums.clips,
           "val_loss": val["loss"], "val_score": val["score"], "best": 0,
           "clips_per_s": sums.clips / max(seconds, 1e-9), "data_share": sums.data_s / max(seconds, 1e-9),
           "seconds": seconds}
    has_val, best = setup.val_loader is not None, state.best
    better = best is None or not has_val or (val["score"], -val["loss"]) > (best["score"], -best["loss"])
    if best is None or better:
        best = {"epoch": epoch, "score": val["score"], "loss": val["loss"]}
        row["best"] = 1
    state.epoch, state.batch, state.partial, state.rng, state.best = epoch, 0, None, None, best
    state.history = [*state.history, row]
    if has_val and config.patience and epoch - best["epoch"] >= config.patience and epoch < config.epochs:
        state.stopped = "early_stopping"
    elif epoch >= config.epochs:
        state.stopped = "completed"
    save(setup, run, state, *(("last", "best") if better else ("last",)))
    run.write_metrics(state.history)
    tb.epoch(row)
    if state.stopped or time.monotonic() - state.plotted >= PLOT_SECONDS:
        run.plot(state.history, "mAP" if setup.multi_label else "accuracy")
        state.plotted = time.monotonic()
    name = "mAP" if setup.multi_label else "acc"
    line = (f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} "
            f"({row['clips_per_s']:.1f} clips/s), "
            + (f"val loss {val['loss']:.4f} {name} {val['score']:.3f}" if has_val else "no validation")
            + (" (best)" if better else ""))
    videos, classes = setup.loader.mix(epoch - 1)
    mix = f"epoch {epoch} batches: median {videos:g} distinct videos and {classes:g} classes per batch"
    for text in (line, mix):
        run.event(text)
        log.info("%s", text)
    if state.stopped == "early_stopping":
        run.event(f"early stopping: no better validation score for {config.patience} epochs")


def stop_nonfinite(setup: Setup, run: RunDir, state: LoopState, value: float) -> None:
    """Record and raise the failure of a NaN / Inf loss; the checkpoints on disk are left as they are."""
    kept = run.file("last.pt") if run.file("last.pt").is_file() else None
    message = (f"{run.path}: loss is {value} at step {state.step + 1} (epoch {state.epoch + 1}, batch "
               f"{state.batch + 1}); training stopped. Last good checkpoint: "
               f"{kept or 'none (no epoch had finished)'}")
    run.event(f"FAILED: {message}")
    run.write_json("result.json", {"stopped": "nonfinite_loss", "error": message, "step": state.step + 1,
                                   "epoch": state.epoch + 1})
    raise NonFiniteLossError(message)


def finish(setup: Setup, run: RunDir, state: LoopState) -> RunResult:
    """Evaluate the best checkpoint on the test videos; write result.json and test_predictions.csv."""
    best = run.load_checkpoint("best", map_location=setup.device)
    setup.model.load_state_dict(best["state_dict"])
    metric = "mAP" if setup.multi_label else "accuracy"
    classes = setup.store.classes
    preds = list(predict_videos(setup.model, setup.test_dataset, aggregation=setup.config.aggregation,
                                multi_label=setup.multi_label, device=setup.device))
    test = score(preds, len(classes), setup.multi_label)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["video", "labels", "predicted", "correct", "score"])
    for p in preds:
        writer.writerow([p.id, "+".join(classes[i] for i in p.labels), classes[p.predicted],
                         int(p.predicted in p.labels), f"{float(p.scores[p.predicted]):.6f}"])
    atomic_write_text(run.file("test_predictions.csv"), out.getvalue())
    has_val = setup.val_loader is not None
    best_epoch = state.best or {"epoch": 0, "score": float("nan")}
    result = RunResult(str(run.path), setup.config.model, state.epoch, int(best_epoch["epoch"]),
                       best_epoch["score"] if has_val else None, test["accuracy"], test["score"], metric,
                       state.stopped or "completed")
    run.write_json("result.json", {**dataclasses.asdict(result), "test": test, "test_videos": len(preds)})
    run.event(f"finished: {result.summary()}")
    return result
