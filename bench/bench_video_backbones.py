"""Video backbones on the CPU: decoded frames per second of each registered video network at its input size with
random weights, clips of 16 frames side by side (a stored step per clip), and the bytes per value of its store."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.bench_backbones import seconds


def run(quick: bool = False) -> str:
    """One markdown section: a row per video backbone."""
    import torch

    from glimpse.extract.config import ExtractConfig, Runtime, WeightsRef
    from glimpse.extract.datasets import load_dataset
    from glimpse.extract.pipeline import extract_video, prepare_store
    from glimpse.extract.synth import SynthConfig, make_synthetic
    from glimpse.extract.video_backbones import VIDEO_BACKBONES, build_video_backbone
    from glimpse.media.decode import Sampling, decode_video
    from glimpse.store.catalog import disk_bytes

    clip, clips = 16, 2  # frames per clip; clips per forward (one batch)
    threads = torch.get_num_threads()
    rows = [f"Random weights, clips of {clip} frames side by side, {clips} clips per batch, {threads} torch threads; "
            f"frames/s: decoded frames ({clips} x {clip}) over the best of 3 forwards; store: the 4 videos of "
            f"{clip * clips} frames of a 2-class synthetic dataset ({clips} steps each), default codec (zstd):", "",
            "| backbone | layer | input | cube (C, K, K) per clip | frames/s | clips/s | bytes per value |",
            "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = make_synthetic(folder / "data", SynthConfig(classes=2, per_class=2, frames=clip * clips, size=112))
        dataset = load_dataset("synthetic", data)
        records = sorted(dataset.videos, key=lambda r: r.id)
        decoded = decode_video(records[0].path, Sampling()).frames  # (clips * clip, 112, 112, 3)
        for name, spec in VIDEO_BACKBONES.items():
            size = min(spec.size, 112) if quick and not spec.fixed else spec.size
            backbone = build_video_backbone(name, "none", size=size, clip_frames=clip)
            batch = backbone.clips(decoded)  # (clips, clip, 112, 112, 3)
            backbone.features(batch[:1], clips)  # warm-up
            rate = len(batch) / min(seconds(backbone.features, batch, clips) for _ in range(3))  # clips per second
            config = ExtractConfig("synthetic", name, None, WeightsRef("none"), size=size, clip_frames=clip,
                                   clip_stride=clip)
            store = str(folder / name)
            prepare_store(store, config, dataset)
            for record in records:
                done = extract_video(store, record, config, Runtime(batch_size=clip * clips, threads=threads))
                assert done.status == "done", done.error
            values = len(records) * clips * spec.channels * backbone.grid**2
            rows.append(f"| {name} | {spec.layer} | {clip} x {size} px | ({spec.channels}, {backbone.grid}, "
                        f"{backbone.grid}) | {rate * clip:.1f} | {rate:.2f} | {disk_bytes(store) / values:.2f} |")
    return "\n".join(["## Video backbones: frames per second on the CPU and bytes per stored value", "", *rows, ""])
