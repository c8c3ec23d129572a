"""A run directory that explains itself, and checkpoints that load with ``torch.load(weights_only=True)``.

    RUN/config.json        the resolved TrainConfig, the model and its config, the store (path, config
                           hash, classes), the data selection and the library versions
    RUN/metrics.csv        one row per epoch (rewritten whole from the checkpoint's history)
    RUN/events.log         started / resumed / best / early stop / failure lines, appended
    RUN/last.pt, best.pt   checkpoints (written to a temporary file, then renamed; one file, two names when
                           an epoch is both)
    RUN/last.prev.pt       the checkpoint last.pt held before the newest, kept until the next one is complete:
                           --resume falls back to it when last.pt is damaged
    RUN/run.lock           locked (flock) by the process training the run, for the run's life: a second one
                           is refused; the kernel drops the lock when its holder dies
    RUN/curves.png         loss and accuracy per epoch
    RUN/result.json        the outcome: best epoch, validation and test scores, why it stopped
    RUN/test_predictions.csv   video, true label(s), predicted class, score
    RUN/tb/                TensorBoard event files, when tensorboard is installed
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from glimpse.files import atomic_link, atomic_write_bytes, atomic_write_text
from glimpse.train.config import ConfigError

log = logging.getLogger("train")

#: metrics.csv columns; the last three are timings (different in every run, even with the same seed)
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_score", "best",
                  "clips_per_s", "data_share", "seconds")
TIMING_COLUMNS = ("clips_per_s", "data_share", "seconds")
#: metrics.csv columns that hold whole numbers
INTEGER_COLUMNS = ("epoch", "step", "best")

#: what every config.json this glimpse writes holds, each a JSON object
CONFIG_SECTIONS = ("train", "model", "store", "data")

#: what every checkpoint this glimpse writes holds (see train.loop.checkpoint)
CHECKPOINT_KEYS = ("model", "config", "state_dict", "optimizer", "train_config", "epoch", "step")


class RunFileError(ConfigError):
    """A file of a run directory that cannot be read or trusted (a broken config.json, a checkpoint this
    glimpse did not write); the message names the file. Nothing in such a file is ever run."""


class RunBusyError(ConfigError):
    """Another process is training this run (it holds RUN/run.lock)."""


def store_location(store: str | Path) -> str:
    """What a run records of its store: the absolute path (a URL as it is), so it is found from any directory."""
    text = str(store)
    return text if "://" in text else str(Path(text).resolve())


def rng_state(device: str) -> dict[str, torch.Tensor]:
    """The torch random states of the devices the run uses, as tensors (weights_only-loadable): the CPU's, and
    the current CUDA device's for a "cuda" run. A CPU run never initialises CUDA."""
    state = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: str) -> None:
    """Restore what :func:`rng_state` returned, for the devices the resumed run uses (however many GPUs show)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.startswith("cuda"):
        cuda = state["cuda"]
        torch.cuda.set_rng_state(cuda[0] if cuda.dim() == 2 else cuda, device)  # (GPUs, N): an older checkpoint


class RunDir:
    """The files of one run (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._metric_lines: list[tuple[dict[str, Any], str]] = []  # (history row, its csv line) of the last write

    def file(self, name: str) -> Path:
        """A file inside the run directory."""
        return self.path / name

    @property
    def exists(self) -> bool:
        """Whether a run was started here (its config.json exists)."""
        return self.file("config.json").is_file()

    def create(self, config: dict[str, Any]) -> None:
        """Start a fresh run here; refuse a directory that already holds a run or other files."""
        if self.exists:
            raise FileExistsError(f"{self.path}: already holds a run; continue it with --resume {self.path}, "
                                  "or choose another --out")
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(f"{self.path}: exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file("config.json"), json.dumps(config, indent=2, default=str) + "\n")

    def config(self) -> dict[str, Any]:
        """config.json, read back."""
        path = self.file("config.json")
        if not path.is_file():
            raise FileNotFoundError(f"{self.path}: no run here (no config.json)")
        try:
            config = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFileError(f"{path}: not valid JSON ({exc}); the run's config.json is broken") from None
        missing = [k for k in CONFIG_SECTIONS if not isinstance(config, dict) or not isinstance(config.get(k), dict)]
        if missing:
            raise RunFileError(f"{path}: not a run's config.json (no {', '.join(repr(k) for k in missing)} object)")
        return config

    def event(self, text: str) -> None:
        """Append one time-stamped line to events.log."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.file("events.log"), "a") as f:
            f.write(f"{stamp} {text}\n")

    def events(self) -> list[str]:
        """The lines of events.log (without their time stamps)."""
        path = self.file("events.log")
        return [line.split(" ", 2)[2] for line in path.read_text().splitlines()] if path.exists() else []

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RUN/run.lock (an exclusive flock) for the block: a second process training this run is refused
        with :class:`RunBusyError`; the kernel drops the lock when the holder exits or is killed."""
        path = self.file("run.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise RunBusyError(f"{self.path}: being trained by another process (pid {holder}); wait for it to "
                                   "end, or stop it first") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def save_checkpoint(self, payload: dict[str, Any], *which: str) -> None:
        """Write ``payload`` atomically to the first ``which``.pt and link the others to it (pickled and written
        once, however many names); the last.pt it replaces stays as last.prev.pt until the new one is complete."""
        if "last" in which and self.file("last.pt").is_file():
            atomic_link(self.file("last.pt"), self.file("last.prev.pt"))
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        first, *others = which
        atomic_write_bytes(self.file(f"{first}.pt"), buffer.getvalue())
        for name in others:
            atomic_link(self.file(f"{first}.pt"), self.file(f"{name}.pt"))

    def load_checkpoint(self, which: str = "last", map_location: str = "cpu") -> dict[str, Any]:
        """``which``.pt loaded with weights_only=True: tensors and plain data only, never code.

        Raises :class:`RunFileError` naming the file when it holds anything else (a pickle that would run code
        is refused, not run), is no checkpoint at all, or lacks what a glimpse checkpoint holds.
        """
        path = self.file(f"{which}.pt")
        if not path.is_file():
            raise FileNotFoundError(f"{self.path}: no {which}.pt checkpoint")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            if found:  # torch's weights-only unpickler met an object it will not build
                raise RunFileError(f"{path}: refused: it holds an object ({found.group(1)}) besides tensors and "
                                   "plain data, so it was not loaded (nothing in it was run)") from None
            raise RunFileError(f"{path}: not a readable checkpoint: damaged, or not a torch file") from None
        except (EOFError, RuntimeError, OSError, ValueError):  # truncated, or no torch file at all
            raise RunFileError(f"{path}: not a readable checkpoint: damaged (truncated?), or not a torch "
                               "file") from None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise RunFileError(f"{path}: not a glimpse checkpoint (it lacks {', '.join(missing)})")
        return ckpt

    def resume_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint ``--resume`` continues from: last.pt, or last.prev.pt (said in one line) when last.pt is
        damaged or gone; None for a run that has none yet. A refused (hostile) last.pt is never passed over;
        trained epochs with no checkpoint to continue from are an error, not a silent restart."""
        try:
            return self.load_checkpoint("last")
        except (RunFileError, FileNotFoundError) as err:
            if "refused" in str(err):
                raise
            if self.file("last.prev.pt").is_file():
                ckpt = self.load_checkpoint("last.prev")
                why = str(err).removeprefix(f"{self.file('last.pt')}: ") if self.file("last.pt").is_file() else \
                    "missing"
                message = (f"{self.file('last.pt')}: {why}; continuing from the previous checkpoint "
                           f"{self.file('last.prev.pt')} (epoch {ckpt['epoch']}, step {ckpt['step']})")
                log.warning("%s", message)
                self.event(message)
                return ckpt
            if self.file("last.pt").is_file():
                raise
        if self.file("best.pt").is_file() or self.file("metrics.csv").is_file():
            raise RunFileError(f"{self.file('last.pt')}: missing, though the run trained epochs (best.pt or "
                               "metrics.csv is there): nothing to continue from; restore last.pt, or start again "
                               "with another --out")
        return None

    def progress(self) -> tuple[int, int | None]:
        """(epochs done, epochs planned) as metrics.csv and config.json say."""
        done = len(self.metrics()) if self.file("metrics.csv").is_file() else 0
        return done, self.config()["train"].get("epochs")

    @property
    def finished(self) -> bool:
        """Whether the run ended as planned (completed or stopped early) and was tested: result.json says so."""
        result = self.read_json("result.json") or {}
        return result.get("stopped") in ("completed", "early_stopping")

    def write_metrics(self, history: list[dict[str, float]]) -> None:
        """metrics.csv from the whole history (so a resumed run never holds a row twice).

        Rows already formatted by the previous call (the same row objects) are not formatted again: a small
        store's run has hundreds of short epochs, and formatting the whole history each epoch grew with its square.
        """
        known, keep = self._metric_lines, 0
        while keep < min(len(known), len(history)) and known[keep][0] is history[keep]:
            keep += 1
        self._metric_lines = known[:keep] + [(row, _csv_line(row)) for row in history[keep:]]
        text = ",".join(METRIC_COLUMNS) + "\n" + "".join(line for _, line in self._metric_lines)
        atomic_write_text(self.file("metrics.csv"), text)

    def metrics(self) -> list[dict[str, str]]:
        """metrics.csv rows as strings."""
        with open(self.file("metrics.csv")) as f:
            return list(csv.DictReader(f))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Any JSON file of the run, written atomically."""
        atomic_write_text(self.file(name), json.dumps(data, indent=2, default=str) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the run, or None where it is absent."""
        path = self.file(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def plot(self, history: list[dict[str, float]], score_name: str) -> None:
        """curves.png: training and validation loss (left), accuracy or mAP (right), per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        epochs = [row["epoch"] for row in history]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        left.plot(epochs, [row["train_loss"] for row in history], "o-", label="train (clips)")
        right.plot(epochs, [row["train_acc"] for row in history], "o-", label="train (clips)")
        if any(not _missing(row.get("val_score")) for row in history):
            left.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation (videos)")
            right.plot(epochs, [row["val_score"] for row in history], "s-", label="validation (videos)")
        left.set(xlabel="epoch", ylabel="loss", title="loss")
        right.set(xlabel="epoch", ylabel=score_name, title=score_name, ylim=(0, 1.02))
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(self.file("curves.png"), buffer.getvalue())


class TensorBoard:
    """TensorBoard scalars under RUN/tb when tensorboard is installed; does nothing otherwise."""

    def __init__(self, run: RunDir, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.writer = None
            return
        self.writer = SummaryWriter(str(run.file("tb")), purge_step=purge_step)

    def epoch(self, row: dict[str, float]) -> None:
        """Write one metrics row at its epoch."""
        if self.writer is None:
            return
        for name in ("train_loss", "train_acc", "val_loss", "val_score", "lr", "clips_per_s", "data_share"):
            if not _missing(row.get(name)):
                self.writer.add_scalar(name, row[name], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _csv_line(row: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([_fmt(row.get(k)) for k in METRIC_COLUMNS])
    return out.getvalue()


def pack_history(history: list[dict[str, Any]]) -> torch.Tensor:
    """The per-epoch rows as one (epochs, len(METRIC_COLUMNS)) float64 tensor, for checkpoints: pickling hundreds
    of small dicts every epoch cost more than the model on small stores; float64 holds each value exactly."""
    nan = float("nan")
    return torch.tensor([[nan if _missing(row.get(k)) else float(row[k]) for k in METRIC_COLUMNS] for row in history],
                        dtype=torch.float64).reshape(len(history), len(METRIC_COLUMNS))  # (E, columns)


def unpack_history(packed: torch.Tensor | list) -> list[dict[str, Any]]:
    """The rows :func:`pack_history` packed (a list, as older checkpoints hold it, is returned as it is)."""
    if isinstance(packed, list):
        return packed
    rows = []
    for values in packed.tolist():
        row: dict[str, Any] = dict(zip(METRIC_COLUMNS, values, strict=True))
        rows.append({k: int(v) if k in INTEGER_COLUMNS and not math.isnan(v) else v for k, v in row.items()})
    return rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
