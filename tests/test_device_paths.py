"""How host data reaches the models' device, checked on the CPU: one upload helper for the CNN's frames and RAFT's
pairs, and the flow rendered as images on the flow-stream CNN's device by both extraction paths (torch.hypot
differs by ulps between CPU and GPU, so rendering on two devices would break the paths' equality on CUDA).

The two spies below wrap glimpse's own functions and call them through: they only record what was handed over."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bad_inputs import moving_block
from test_pipeline import assert_same_entries, ucf_tree

import glimpse.extract.flow as flow_module
import glimpse.extract.streams as streams_module
from glimpse.extract.api import FeatureRequest, fingerprinted, resolve_config
from glimpse.extract.config import Runtime
from glimpse.extract.datasets import load_dataset
from glimpse.extract.device import upload
from glimpse.extract.flow import FlowEstimator
from glimpse.extract.pipeline import extract_group, prepare_store, worker_models


def test_upload_returns_a_tensor_already_there_and_moves_any_other():
    frames = torch.arange(24, dtype=torch.uint8).reshape(1, 2, 4, 3)
    assert upload(frames, "cpu") is frames  # nothing copied on the CPU
    moved = upload(frames, torch.device("meta"))
    assert (moved.device.type, moved.shape, moved.dtype) == ("meta", frames.shape, frames.dtype)


@pytest.mark.cuda
def test_upload_to_cuda_goes_through_pinned_memory_and_keeps_the_values():
    frames = torch.arange(24, dtype=torch.uint8).reshape(1, 2, 4, 3)
    moved = upload(frames, "cuda")
    torch.cuda.synchronize()
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), frames)


def test_raft_uploads_its_pairs_through_the_one_upload_helper(monkeypatch):
    handed: list[tuple[torch.device, str]] = []

    def spy(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        handed.append((tensor.device, str(device)))
        return upload(tensor, device)

    monkeypatch.setattr(flow_module, "upload", spy)
    frames = moving_block(3, 16, 16)  # (3, 16, 16, 3) uint8
    flow = FlowEstimator("raft", batch_size=2)(frames[:2], frames[1:])
    assert flow.shape == (2, 2, 16, 16)
    assert handed == [(torch.device("cpu"), "cpu")] * 2  # both frames of the one batch of pairs


def test_flow_cnn_renders_on_the_cnns_device_in_both_paths_and_both_store_the_same(tmp_path, monkeypatch,
                                                                                  worker_threads):
    root = ucf_tree(tmp_path / "data", {"v_Mix_g01_c01.mp4": moving_block(8, 24, 32),  # 8: calibration frames
                                        "v_Mix_g01_c02.mp4": moving_block(4, 24, 32)})
    dataset = fingerprinted(load_dataset("synthetic", str(root)))
    request = FeatureRequest("synthetic", str(root), weights="none", size=32, frames=3, flow="raft")
    config = resolve_config(request, dataset)
    config = dataclasses.replace(config, streams=config.stream_specs())  # as run_extraction hands it to workers
    records = sorted(dataset.videos, key=lambda r: r.id)
    real, handed = streams_module.flow_to_image, []

    def renderer(flow, *args, **kwargs):
        handed.append(flow.device if isinstance(flow, torch.Tensor) else type(flow).__name__)
        return real(flow, *args, **kwargs)

    monkeypatch.setattr(streams_module, "flow_to_image", renderer)
    seen, stores = {}, {}
    for path in ("sequential", "pipelined"):
        runtime = Runtime(batch_size=2, pipelined=path == "pipelined", group=2)
        stores[path] = tmp_path / path
        prepare_store(str(stores[path]), config, dataset)
        outcomes = extract_group(str(stores[path]), records, config, runtime)
        assert [o.status for o in outcomes] == ["done", "done"], outcomes
        seen[path], handed[:] = list(handed), []
    cnn = worker_models(config, Runtime(batch_size=2)).flow_backbone.device
    assert seen["sequential"] and set(seen["sequential"]) == set(seen["pipelined"]) == {cnn}  # tensors there, not numpy
    assert_same_entries(stores["sequential"], stores["pipelined"])
