"""HAN's temporal stream as a two-stream net: stacked flow into a 2L-channel CNN (extract/flow_stack.py), its
fine-tuning command (train/flownet.py), and HAN reading it (train/setup.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from extraction import extract

from glimpse.extract.api import FeatureRequest, fingerprinted, resolve_config
from glimpse.extract.backbones import build_backbone
from glimpse.extract.cli import main as extract_main
from glimpse.extract.config import Runtime
from glimpse.extract.datasets import load_dataset
from glimpse.extract.flow_stack import FlowStackStream, flow_input, flow_stacks, initial_flow_body
from glimpse.extract.streams import Extractor
from glimpse.store import open_store
from glimpse.train.cli import main as train_main
from glimpse.train.flownet import iterations_for

#: tiny: every frame of TINY's 10-frame videos (consecutive flows), 64 px, L = 2
OPTS = {"backbone": "googlenet", "weights": "none", "size": 64, "flow": "farneback", "batch_size": 8,
        "streams": "rgb,flow,flow_stack", "flow_stack": 2}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cross_modality_initialisation_averages_the_rgb_filters_and_replicates_them():
    L = 3
    body, identity = initial_flow_body("googlenet", None, 64, L, "none")
    rgb = build_backbone("googlenet", "none", size=64).body.state_dict()
    flow = body.state_dict()
    expected = rgb["conv1.conv.weight"].numpy()  # (64, 3, 7, 7)
    expected = np.repeat(expected.sum(axis=1, keepdims=True) / 3, 2 * L, axis=1)  # (64, 2L, 7, 7)
    np.testing.assert_allclose(flow["conv1.conv.weight"].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert identity == "cross-modality:none"
    others = [key for key in rgb if key != "conv1.conv.weight"]
    assert others and all(torch.equal(rgb[key], flow[key]) for key in others)


def test_stacks_start_at_their_step_repeat_the_last_flow_and_scale_as_stated():
    T, L, h, w = 4, 3, 5, 6
    flow = torch.randn(T, 2, h, w) * 30  # some beyond the 20 px bound
    stacks = flow_stacks(flow, np.arange(T), L).numpy()  # (T, 2L, h, w)
    f = flow.numpy()
    for t in range(T):
        steps = [min(t + k, T - 1) for k in range(L)]
        expected = np.concatenate([f[s] for s in steps])  # x_t, y_t, x_t+1, y_t+1, ...
        np.testing.assert_array_equal(stacks[t], expected)
    images = flow_input(torch.from_numpy(stacks), h).numpy()  # (T, 2L, h, h): resized to S x S
    scaled = flow_input(torch.from_numpy(stacks[..., :h]), h).numpy()  # (T, 2L, h, h): the rule alone
    np.testing.assert_allclose(scaled, np.clip(stacks[..., :h], -20, 20) / 40 / 0.226, rtol=1e-6)
    assert images.shape == (T, 2 * L, h, h)


def test_iterations_rule_scales_the_papers_20000():
    assert iterations_for(256, 9_537) == (20_000, 14_000)
    assert iterations_for(256, 20_000) == (20_000, 14_000)  # never more than the paper
    assert iterations_for(64, 100) == (round(20_000 * 4 * 100 / 9_537), round(0.7 * round(20_000 * 4 * 100 / 9_537)))


@pytest.fixture(scope="module")
def stacked(tiny_synthetic, dask_client, tmp_path_factory):
    """The tiny dataset with rgb, raw flow and flow_stack (L = 2, cross-modality), and its config."""
    out = tmp_path_factory.mktemp("stack") / "store"
    summary = extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, **OPTS)
    assert not summary.failed, summary.report()
    return out


@pytest.mark.slow
def test_extraction_writes_a_flow_stack_stream_through_a_2l_channel_first_layer(stacked):
    store = open_store(stacked)
    assert store.config["flow_stack"] == {"length": 2, "weights": "cross-modality:none"}
    video = store.videos[0]
    cube = store.read(video.id, "flow_stack").astype(np.float32)
    assert cube.shape == (video.n_frames, 1024, 2, 2) == store.read(video.id, "rgb").shape
    assert np.isfinite(cube).all() and np.abs(cube).max() > 0
    assert not np.allclose(cube, store.read(video.id, "rgb").astype(np.float32))
    request = FeatureRequest("synthetic", store.metadata.source["root"], streams=tuple(OPTS["streams"].split(",")),
                             **{k: v for k, v in OPTS.items() if k not in ("streams", "batch_size")})
    config = resolve_config(request, fingerprinted(load_dataset("synthetic", request.root)))  # what a worker gets
    assert config.to_dict() == store.config
    stream = Extractor(config, Runtime(batch_size=8)).streams["flow_stack"]
    assert isinstance(stream, FlowStackStream)
    assert stream.backbone.body.get_submodule("conv1.conv").in_channels == 4


@pytest.mark.slow
def test_flownet_lowers_its_loss_and_its_state_dict_changes_the_extracted_features(stacked, tiny_synthetic,
                                                                                     dask_client, tmp_path):
    weights = tmp_path / "flow.pt"
    result = CliRunner().invoke(train_main, ["flownet", "--store", str(stacked), "--out", str(weights),
                                             "--batch-size", "6", "--iterations", "60"])
    assert result.exit_code == 0, result.output
    log = (tmp_path / "flow.log").read_text()
    assert "20,000 x (256 / batch)" in log and "lr 1e-2, 1e-3 from iteration 42" in log
    assert len(re.findall(r"^iteration \d+ lr \S+ loss \S+$", log, re.M)) == 60
    found = re.search(r"training stacks (\S+) -> (\S+);", log)
    assert found, log
    before, after = map(float, found.groups())
    assert after < before, log
    assert "batch-norm statistics recomputed" in result.output
    out = tmp_path / "tuned"
    summary = extract("synthetic", str(tiny_synthetic), str(out), client=dask_client, flow_weights=str(weights),
                      **OPTS)
    assert not summary.failed, summary.report()
    tuned, initial = open_store(out), open_store(stacked)
    assert tuned.config["flow_stack"]["weights"].startswith("sha256:")
    assert tuned.config_hash != initial.config_hash
    video = initial.videos[0].id
    np.testing.assert_array_equal(tuned.read(video, "rgb"), initial.read(video, "rgb"))
    assert np.abs(tuned.read(video, "flow_stack").astype(np.float32)
                  - initial.read(video, "flow_stack").astype(np.float32)).max() > 1e-2


def test_flow_weights_of_another_stack_length_is_refused_in_one_line_before_anything_is_written(tiny_synthetic,
                                                                                                 tmp_path):
    body, _ = initial_flow_body("googlenet", None, 64, 3, "none")  # 6 input channels; L = 2 takes 4
    path = tmp_path / "six.pt"
    torch.save(body.state_dict(), path)
    args = ["--dataset", "synthetic", "--root", str(tiny_synthetic), "--out", str(tmp_path / "s"), "--backbone",
            "googlenet", "--weights", "none", "--size", "64", "--flow", "farneback", "--streams",
            "rgb,flow,flow_stack", "--flow-stack", "2", "--flow-weights", str(path)]
    result = CliRunner().invoke(extract_main, args)
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "six.pt" in last and "conv1.conv.weight" in last and "--flow-stack" in last
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()
    both = CliRunner().invoke(extract_main, [*args[:-5], "rgb,flow,flow_cnn,flow_stack", "--flow-weights", str(path)])
    assert both.exit_code == 2 and "extract flow_cnn in another store" in both.output
