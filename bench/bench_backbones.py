"""Backbones on the CPU: frames per second of each registered backbone (and one ``torchvision:NAME``) at its input
size with random weights, and the bytes per value of the store each one writes (zstd, float16 cubes)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

#: the registry's backbones, and one torchvision network cut at a node named on the command line
EXTRA = (("torchvision:regnet_y_400mf", "trunk_output"),)


def seconds(fn, *args) -> float:
    """Wall time of one call of ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(quick: bool = False) -> str:
    """One markdown section: a row per backbone."""
    import torch

    from glimpse.extract.backbones import BACKBONES, build_backbone, output_grid
    from glimpse.extract.config import ExtractConfig, Runtime, WeightsRef
    from glimpse.extract.datasets import load_dataset
    from glimpse.extract.pipeline import extract_video, prepare_store
    from glimpse.extract.synth import SynthConfig, make_synthetic
    from glimpse.extract.video_backbones import is_video_backbone
    from glimpse.media.decode import Sampling, decode_video
    from glimpse.store.catalog import disk_bytes

    frames, batch = (2, 2) if quick else (8, 8)
    threads = torch.get_num_threads()
    rows = [f"Random weights, batch {batch}, {threads} torch threads; frames/s: the best of 3 forwards of {frames} "
            f"frames; store: the 4 videos of {frames} frames of a 2-class synthetic dataset, default codec (zstd):", "",
            "| backbone | layer | input | cube (C, K, K) | frames/s | bytes per value |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = make_synthetic(folder / "data", SynthConfig(classes=2, per_class=2, frames=frames, size=112))
        dataset = load_dataset("synthetic", data)
        records = sorted(dataset.videos, key=lambda r: r.id)
        decoded = decode_video(records[0].path, Sampling()).frames  # (frames, 112, 112, 3)
        images = [name for name in BACKBONES if not is_video_backbone(name)]  # video ones: bench_video_backbones
        for name, layer in [*((name, None) for name in images), *EXTRA]:
            backbone = build_backbone(name, "none", layer=layer, size=128 if quick else None)
            backbone.features(decoded[:1], batch)  # warm-up
            fps = len(decoded) / min(seconds(backbone.features, decoded, batch) for _ in range(3))  # least disturbed
            config = ExtractConfig("synthetic", name, layer, WeightsRef("none"), size=backbone.size)
            store = str(folder / name.replace(":", "-"))
            prepare_store(store, config, dataset)
            for record in records:
                assert extract_video(store, record, config, Runtime(batch_size=batch, threads=threads)).status == "done"
            grid = output_grid(backbone.spec, backbone.size)
            values = len(records) * frames * backbone.spec.channels * grid**2
            rows.append(f"| {name} | {backbone.spec.layer} | {backbone.size} px | ({backbone.spec.channels}, {grid}, "
                        f"{grid}) | {fps:.1f} | {disk_bytes(store) / values:.2f} |")
    return "\n".join(["## Backbones: frames per second on the CPU and bytes per stored value", "", *rows, ""])
