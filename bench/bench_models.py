"""Forward+backward throughput of every registered model on CPU, at the issue's clip shape.

Each model trains on batch 8 x 30 frames x 1024 channels x 7 x 7 cubes (two such streams for the
two-stream HAN) with its paper's default config; the same model at batch 1 shows what the
batch-vectorized recurrence buys per clip.
"""

from __future__ import annotations

import time

import torch

from glimpse.train.losses import model_loss
from glimpse.train.models import MODELS, build_model

FULL = {"batch": 8, "frames": 30, "channels": 1024, "size": 7, "classes": 11, "overrides": {}}
QUICK = {"batch": 2, "frames": 4, "channels": 16, "size": 4, "classes": 3, "overrides": {"hidden": 8}}
MIN_SECONDS = 3.0  # repeat cheap models for this long and keep their fastest step
SLOW_SECONDS = 10.0  # a warm-up step slower than this is measured as is, not repeated


def clips_per_second(name: str, model: torch.nn.Module, shape: dict, batch: int, quick: bool) -> float:
    """Forward+backward clips per second of ``model`` on random cubes of ``batch`` clips."""
    streams = [torch.randn(batch, shape["frames"], shape["channels"], shape["size"], shape["size"])
               for _ in MODELS[name].streams]  # each (B, T, C, K, K)
    labels = torch.randint(0, shape["classes"], (batch,))

    def step() -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model_loss(model(*streams), labels).backward()
        return time.perf_counter() - start

    first = step()  # warm-up
    if quick or first > SLOW_SECONDS:
        return batch / first
    times = [step()]
    while sum(times) < MIN_SECONDS:
        times.append(step())
    return batch / min(times)  # the fastest step: the least disturbed by other work on a shared machine


def run(quick: bool = False) -> str:
    """Markdown section: per model, input shape, clips/s, ms per clip, batch-8 vs batch-1 speedup, params."""
    shape = QUICK if quick else FULL
    rows = []
    for name in MODELS:
        fields = MODELS[name].config.__dataclass_fields__
        overrides = {k: v for k, v in shape["overrides"].items() if k in fields}
        torch.manual_seed(0)
        model = build_model(name, channels=shape["channels"], size=shape["size"], classes=shape["classes"],
                            **overrides)
        model.train()
        batched = clips_per_second(name, model, shape, shape["batch"], quick)
        single = clips_per_second(name, model, shape, 1, quick)
        dims = f"{shape['batch']} x {shape['frames']} x {shape['channels']} x {shape['size']} x {shape['size']}"
        params = sum(p.numel() for p in model.parameters())
        rows.append(f"| {name} | {' + '.join(MODELS[name].streams)}: {dims} | {batched:.2f} | {1000 / batched:.0f} | "
                    f"{batched / single:.1f}x | {params:,} |")
    return "\n".join([
        "## Models: forward+backward clips/s on CPU",
        "",
        f"Training step (forward, loss with penalties, backward) of every registered model with its paper's default "
        f"config, on random cubes; {torch.get_num_threads()} torch threads; the fastest of the steps repeated for "
        f"{MIN_SECONDS:g} s (one step for models slower than {SLOW_SECONDS:g} s). `vs batch 1` is clips/s at batch "
        f"{shape['batch']} over clips/s at batch 1: what vectorizing the recurrence over the batch buys.",
        "",
        "| model | input shape | clips/s | ms per clip | vs batch 1 | params |",
        "|---|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    print(run(quick=True))
