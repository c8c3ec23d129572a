"""Extraction speed, as ratios measured side by side in one run (issue targets in brackets).

- decode + sampling against ``ffmpeg -threads 1 -i FILE -f null -`` on the same files;
  30 frames sampled from a 750-frame video against one sequential full decode [<= 1x];
- the whole per-video extraction (decode, conversion, CNN, store write) against the bare
  backbone forward on the same frames and batch size [<= 1.15x];
- decode, CNN and whole time per video, sequential and pipelined (decode threads overlapped with
  batches across videos), and the overlap: pipelined whole / max(decode, CNN) [<= 1.15x];
- 2 Dask workers against 1 on decode- and flow-bound work [>= 1.7x];
- bytes on disk per stored feature value [<= 1.2], and the codecs compared on the same cubes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _clock(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (the least disturbed by the machine's other load)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _long_videos(folder: Path, frames: int, size: tuple[int, int]) -> dict[str, Path]:
    from glimpse.extract.synth import render_clip
    from glimpse.media.encode import write_video

    width, height = size
    clip, _ = render_clip("SquareRight", height, frames, seed=0)  # (T, H, H, 3)
    clip = np.ascontiguousarray(np.concatenate([clip, clip[:, :, : width - height]], axis=2))  # (T, H, W, 3)
    return {
        "H.264 .mp4 (one keyframe)": write_video(folder / "long.mp4", clip),
        "MPEG-4 .avi (keyframe every 12)": write_video(folder / "long.avi", clip),
    }


def decode_section(folder: Path, quick: bool) -> list[str]:
    import av

    from glimpse.media.decode import Sampling, decode_video

    frames = 60 if quick else 750
    rows = ["| file | ffmpeg null decode | PyAV full decode to RGB | full / ffmpeg | 30 sampled | 30 sampled / full |",
            "|---|---|---|---|---|---|"]
    ffmpeg = shutil.which("ffmpeg")
    for name, path in _long_videos(folder, frames, (320, 240)).items():
        t_ffmpeg = _clock(lambda p=path: subprocess.run([ffmpeg, "-v", "error", "-threads", "1", "-i", str(p), "-f",
                                                         "null", "-"], check=True)) if ffmpeg else float("nan")

        def full(p=path) -> None:
            with av.open(str(p)) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                for frame in container.decode(stream):
                    frame.to_ndarray(format="rgb24", threads=1)

        t_full = _clock(full)
        t_ours_full = _clock(lambda p=path: decode_video(p, Sampling()))
        t_sampled = _clock(lambda p=path: decode_video(p, Sampling(frames=30)))
        rows.append(f"| {name}, {frames} frames 320x240 | {t_ffmpeg * 1e3:.0f} ms | {t_ours_full * 1e3:.0f} ms "
                    f"(plain loop {t_full * 1e3:.0f} ms) | {t_ours_full / t_ffmpeg:.2f}x | {t_sampled * 1e3:.0f} ms "
                    f"| **{t_sampled / t_full:.2f}x** |")
    if not ffmpeg:
        rows.append("\nffmpeg is not installed here (`apt-get install ffmpeg`): its column is empty.")
    return rows


def pipeline_section(folder: Path, quick: bool) -> list[str]:
    import torch

    from glimpse.extract.backbones import build_backbone
    from glimpse.extract.config import ExtractConfig, Runtime
    from glimpse.extract.datasets import load_dataset
    from glimpse.extract.pipeline import extract_video, prepare_store
    from glimpse.extract.synth import SynthConfig, make_synthetic
    from glimpse.media.decode import Sampling, decode_video

    size, per_class, batch = (64, 2, 8) if quick else (224, 4, 32)
    data = make_synthetic(folder / "data", SynthConfig(classes=2, per_class=per_class, frames=24, size=112))
    dataset = load_dataset("synthetic", data)
    records = sorted(dataset.videos, key=lambda r: r.id)
    threads = torch.get_num_threads()
    config = ExtractConfig(dataset="synthetic", backbone="googlenet", size=size)
    runtime = Runtime(batch_size=batch, threads=threads)
    prepare_store(str(folder / "store"), config, dataset, overwrite=True)
    extract_video(str(folder / "store"), records[0], config, runtime)  # builds the worker's model once
    backbone = build_backbone("googlenet", "none", size=size)
    decoded = [decode_video(r.path, Sampling()).frames for r in records]
    n_frames = sum(len(f) for f in decoded)

    def forward() -> None:
        for frames in decoded:
            backbone.features(frames, batch)

    repetition = iter(range(100))

    def whole() -> None:
        store = str(folder / f"store{next(repetition)}")  # a fresh store each time: done videos would be skipped
        prepare_store(store, config, dataset, overwrite=True)
        for record in records:
            assert extract_video(store, record, config, runtime).status == "done"

    t_forward, t_whole = _clock(forward, 2), _clock(whole, 2)
    stored = sum(p.stat().st_size for p in (folder / "store0").rglob("*") if p.is_file())
    values = n_frames * 1024 * backbone.grid**2
    rows = [f"GoogLeNet at {size} px, batch {batch}, {len(records)} videos x 24 frames, {threads} torch threads:",
            "", "| bare backbone forward | whole extraction (decode, convert, CNN, write) | whole / forward |",
            "|---|---|---|",
            f"| {t_forward:.2f} s ({n_frames / t_forward:.0f} frames/s) | {t_whole:.2f} s "
            f"({n_frames / t_whole:.0f} frames/s) | **{t_whole / t_forward:.2f}x** |", ""]
    rows += codec_rows(folder / "store0", stored, values)
    return rows


def overlap_section(folder: Path, quick: bool) -> list[str]:
    """Decode alone, CNN alone, and the whole extraction sequential and pipelined, on the same videos: with the
    CNN at its paper size (CNN-bound) and at a small size where decoding costs about as much as the CNN."""
    from glimpse.extract.synth import SynthConfig, make_synthetic

    source, frames, sampled = (64, 24, 12) if quick else (240, 90, 30)
    data = make_synthetic(folder / "overlap", SynthConfig(classes=2, per_class=4, frames=frames, size=source))
    threads = max(1, (os.cpu_count() or 1) - 1)  # the CNN's torch threads; a core is left to the decode threads
    lines = [f"8 videos of {frames} frames at {source} x {source}, {sampled} sampled each (decoding reads up to the "
             f"last one); GoogLeNet, random weights; {threads} torch thread(s), 2 decode threads; times per video, "
             "best of 2:", "",
             "| CNN input, batch | path | decode | CNN | whole | whole / (decode + CNN) | whole / max(decode, CNN) |",
             "|---|---|---|---|---|---|---|"]
    for size, batch in ((64, 8),) if quick else ((224, 32), (64, 32)):
        lines += _overlap_rows(folder, data, size, batch, sampled, threads)
    return lines + ["", "Pipelined whole / max(decode, CNN) is the overlap achieved (target <= 1.15x; 1.00x is "
                    "perfect overlap, (decode + CNN) / max(decode, CNN) none)."]


def _overlap_rows(folder: Path, data: Path, size: int, batch: int, sampled: int, threads: int) -> list[str]:
    import torch

    from glimpse.extract.config import ExtractConfig, Runtime
    from glimpse.extract.datasets import load_dataset
    from glimpse.extract.pipeline import extract_group, prepare_store, worker_models

    dataset = load_dataset("synthetic", data)
    tasks = sorted(dataset.videos, key=lambda r: r.id)
    config = ExtractConfig(dataset="synthetic", backbone="googlenet", size=size, frames=sampled)
    runtimes = {p: Runtime(batch_size=batch, threads=threads, pipelined=p) for p in (False, True)}
    torch.set_num_threads(threads)
    x = worker_models(config, runtimes[True])  # the models both paths use, built once

    def decode() -> list:  # what the decode threads do: decode, sample, resize, normalize
        return [x.backbone.preprocess(x.decode(task)[0].frames) for task in tasks]

    images = torch.cat(decode())  # (N, 3, S, S)

    def cnn() -> None:  # the bare CNN on the pipelined path's fixed-size batches
        for start in range(0, len(images), batch):
            x.backbone.fixed_batch(images[start : start + batch], batch)

    stores = iter(range(100))

    def whole(pipelined: bool) -> None:
        store = str(folder / f"overlap{size}-{next(stores)}")  # a fresh store each time: done videos are skipped
        prepare_store(store, config, dataset, overwrite=True)
        assert all(o.status == "done" for o in extract_group(store, tasks, config, runtimes[pipelined]))

    t_decode, t_cnn = _clock(decode, 2), _clock(cnn, 2)
    n, bound = len(tasks), max(t_decode, t_cnn)
    rows = []
    for name, pipelined in (("sequential", False), ("pipelined", True)):
        t_whole = _clock(lambda p=pipelined: whole(p), 2)
        rows.append(f"| {size} px, {batch} | {name} | {t_decode / n * 1e3:.0f} ms | {t_cnn / n * 1e3:.0f} ms | "
                    f"{t_whole / n * 1e3:.0f} ms | {t_whole / (t_decode + t_cnn):.2f}x | **{t_whole / bound:.2f}x** |")
    return rows


def gpu_note() -> list[str]:
    """What this file says about GPUs: the note that none was lent, or that the GPU figures are not written yet."""
    import torch

    what = ("end-to-end frames per second against the bare model's on the same batches for GoogLeNet and "
            "ResNet-152, with and without RAFT flow, the GPU busy share (targets >= 0.8x the bare model for "
            "GoogLeNet without flow, >= 80% busy), and the same for 2 workers when 2 GPUs are visible")
    if not torch.cuda.is_available():
        return ["**No GPU was lent** for this run: the GPU figures are not measured. A GPU run would measure " + what
                + "; the CPU overlap figures above are what this machine can show."]
    return [f"A GPU is visible ({torch.cuda.get_device_name(0)}), but this benchmark does not measure it yet: "
            + what + " remain to be written."]


def codec_rows(store_path: Path, stored: int, values: int) -> list[str]:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    from glimpse.store import open_store

    s = open_store(store_path)
    cube = np.concatenate([s.read(v.id, "rgb") for v in s.videos])  # (N, C, K, K) float16
    rows = [f"Store on disk: **{stored / values:.3f} bytes per stored value** (float16 = 2; metadata included; "
            f"{(cube == 0).mean():.0%} zeros).", "", "| codec on the same cubes | bytes per value |", "|---|---|"]
    for name, codec in {
        "zstd-5 (used)": ZstdCodec(level=5),
        "zstd-9": ZstdCodec(level=9),
        "Blosc zstd-5 byte shuffle": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=2),
        "Blosc zstd-5 bit shuffle": BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=2),
    }.items():
        memory = zarr.storage.MemoryStore()
        array = zarr.create_array(memory, shape=cube.shape, dtype=cube.dtype, chunks=cube.shape, compressors=codec)
        array[:] = cube
        nbytes = sum(len(v.to_bytes()) for k, v in memory._store_dict.items() if "/" in k or k.startswith("c"))
        rows.append(f"| {name} | {nbytes / cube.size:.3f} |")
    return rows


def scaling_section(folder: Path, quick: bool) -> list[str]:
    from distributed import Client, LocalCluster

    from glimpse.extract.api import FeatureRequest, RunOptions, extract_dataset
    from glimpse.extract.synth import SynthConfig, make_synthetic

    per_class, frames = (2, 8) if quick else (8, 24)
    data = make_synthetic(folder / "flowdata", SynthConfig(classes=2, per_class=per_class, frames=frames, size=112))
    request = FeatureRequest("synthetic", str(data), weights="none", size=64, flow="farneback")
    seconds = {}
    # (Dask workers, threads each): one thread per worker isolates the workers' scaling; the CLI's own
    # choice gives a lone worker every core (threads = cores / workers)
    for workers, threads_from in ((1, 2), (2, 2), (1, 1)):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            # warm every worker's model on a throw-away store, then time a fresh store
            warm, timed = (RunOptions(out=str(folder / f"{name}{workers}{threads_from}"), batch_size=32,
                                      workers=threads_from) for name in ("warm", "run"))  # threads = cores // workers
            extract_dataset(request, warm, client)
            start = time.perf_counter()
            summary = extract_dataset(request, timed, client)
            seconds[workers, threads_from] = time.perf_counter() - start
            assert not summary.failed
    videos = 2 * per_class
    cores = os.cpu_count() or 1
    one_thread, cli = seconds[1, 2] / seconds[2, 2], seconds[1, 1] / seconds[2, 2]
    return [f"Farneback flow at 112 px plus a 64 px GoogLeNet (decode- and flow-bound), {videos} videos x {frames} "
            "frames, models already loaded:", "", "| compared | 1 worker | 2 workers | speed-up |", "|---|---|---|---|",
            f"| one thread per worker (the workers' scaling) | {seconds[1, 2]:.2f} s | {seconds[2, 2]:.2f} s | "
            f"**{one_thread:.2f}x** |",
            f"| as the CLI runs them (a lone worker gets all {cores} cores' threads) | {seconds[1, 1]:.2f} s | "
            f"{seconds[2, 2]:.2f} s | **{cli:.2f}x** |"]


def run(quick: bool = False) -> str:
    """The extraction benchmarks as one markdown section."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = ["## Extraction", "", "### Decode and sampling (one thread each)", ""]
        lines += decode_section(folder, quick)
        lines += ["", "### Whole extraction against the bare CNN forward (one process, no Dask)", ""]
        lines += pipeline_section(folder, quick)
        lines += ["", "### Decode overlapped with the CNN: sequential against pipelined (one process, no Dask)", ""]
        lines += overlap_section(folder, quick)
        lines += ["", "### GPU", ""]
        lines += gpu_note()
        lines += ["", "### Dask: 2 workers against 1", ""]
        lines += scaling_section(folder, quick)
    return "\n".join(lines) + "\n"
