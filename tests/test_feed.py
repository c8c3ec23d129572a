"""Keeping a device fed, checked on the CPU: what is copied to the device and when, what waits for it, and which
values leave it (the meta device stands in for a GPU where only the copies matter)."""

from __future__ import annotations

import json
import traceback

import numpy as np
import torch
from extraction import extract
from test_extract import TINY_OPTS
from test_train import FAST, hand_store
from torch.utils._python_dispatch import TorchDispatchMode

from glimpse.extract.backbones import build_backbone
from glimpse.extract.device import upload
from glimpse.extract.flow import RAFT_BATCH_BYTES, FlowEstimator
from glimpse.store import open_store
from glimpse.train.data import Normalization
from glimpse.train.loop import Pending, autocast, train_model
from glimpse.train.losses import group_sparsity
from glimpse.train.models import build_model

aten = torch.ops.aten


class Ops(TorchDispatchMode):
    """Every aten op run on this thread while active: (op, its tensor arguments' devices, its keyword arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[object, set[str], dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if func is aten._local_scalar_dense.default and any("torch/optim/" in f.filename
                                                            for f in traceback.extract_stack()):
            devices = {"host"}  # the optimizers' step counts: host tensors on a GPU too (torch keeps them there)
        self.seen.append((func, devices, kwargs))
        return func(*args, **kwargs)

    def uploads(self) -> int:
        """Copies from the CPU to another device."""
        return sum(func is aten._to_copy.default and devices == {"cpu"} and str(kw.get("device", "cpu")) != "cpu"
                   for func, devices, kw in self.seen)

    def scalar_reads(self) -> int:
        """Values read back to Python (float(), int(), bool(), .item() of a tensor): each a host sync on a GPU."""
        return sum(func is aten._local_scalar_dense.default and devices != {"host"} for func, devices, _ in self.seen)


def test_standardization_constants_are_copied_to_the_device_once_not_at_every_step():
    norm = Normalization({"rgb": np.arange(4, dtype=np.float32)}, {"rgb": np.full(4, 2, np.float32)})
    x = torch.zeros(2, 3, 4, 5, 5, dtype=torch.float16, device="meta")  # (B, T, C, K, K)
    steps = []
    for _ in range(3):
        with Ops() as ops:
            assert norm.standardize("rgb", x).shape == x.shape
        steps.append(ops.uploads())
    assert steps == [2, 0, 0]  # mean and 1 / std, once
    cpu = torch.randn(2, 3, 4, 5, 5).half()
    expected = (cpu.float() - torch.arange(4.0)[:, None, None]) * torch.full((4, 1, 1), 0.5)  # the equation by hand
    assert torch.equal(norm.standardize("rgb", cpu), expected)


def test_block_masks_are_copied_to_the_device_once_not_at_every_step():
    attn = torch.zeros(2, 3, 7, 7, device="meta")  # (B, T, K, K)
    steps = []
    for _ in range(3):
        with Ops() as ops:
            assert group_sparsity(attn, 3, layout="even").shape == (2,)
        steps.append(ops.uploads())
    assert steps[0] == 1 and steps[1:] == [0, 0]


def test_training_reads_values_off_the_device_per_epoch_not_per_step(tmp_path):
    store = hand_store(tmp_path / "store", streams=("rgb",))
    reads = {}
    for batch in (2, 6):  # three times the steps in the second run
        with Ops() as ops:
            train_model(store, "regattn", tmp_path / f"b{batch}", **{**FAST, "epochs": 1, "batch_size": batch,
                                                                     "val_fraction": 0}, model_args={"hidden": 8})
        reads[batch] = ops.scalar_reads()
    assert reads[2] == reads[6]  # checkpoints and test predictions read values; training steps do not


def test_pending_sums_name_the_first_nonfinite_loss_and_read_in_one_copy():
    pending = Pending("cpu")
    for loss, hits in ((1.5, 2), (float("nan"), 1), (float("inf"), 0), (2.0, 1)):
        pending.add(torch.tensor(loss), torch.tensor(hits), clips=2)
    total, hits, bad, bad_loss = pending.read()
    assert (hits, bad, pending.steps) == (4, 1, 4) and np.isnan(bad_loss) and np.isnan(total)


def test_bf16_autocast_runs_a_training_step_and_the_default_leaves_float32_bits(tmp_path):
    torch.manual_seed(0)
    model = build_model("regattn", classes=3, channels=6, size=3, hidden=8).eval()
    x = torch.randn(2, 4, 6, 3, 3)  # (B, T, C, K, K)
    with torch.no_grad():
        plain = model(x).logits
        with autocast("cpu", "none"):
            none = model(x).logits
        with autocast("cpu", "bf16"):
            bf16 = model(x).logits
    assert torch.equal(none, plain) and none.dtype == torch.float32
    assert not torch.equal(bf16.float(), plain)  # the forward really ran in bfloat16
    store = hand_store(tmp_path / "store", streams=("rgb",))
    result = train_model(store, "regattn", tmp_path / "run", **{**FAST, "epochs": 1, "amp": "bf16"},
                         model_args={"hidden": 8})
    assert 0 <= result.test_accuracy <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["amp"] == "bf16"


def test_decode_threads_is_a_run_option_recorded_nowhere_in_the_store(tiny_synthetic, dask_client, tmp_path):
    stores = {}
    for threads in (1, 3):
        summary = extract("synthetic", str(tiny_synthetic), str(tmp_path / str(threads)), client=dask_client,
                          decode_threads=threads, **TINY_OPTS)
        assert not summary.failed
        stores[threads] = open_store(tmp_path / str(threads))
    one, three = stores[1], stores[3]
    assert one.config_hash == three.config_hash and one.metadata.source == three.metadata.source
    assert "decode_threads" not in json.dumps(one.metadata.source)
    for video in one.videos:
        assert np.array_equal(one.read(video.id, "rgb"), three.read(video.id, "rgb"))


def test_float16_on_the_device_rounds_as_the_store_writer_does():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(10_000) * 10.0 ** rng.integers(-9, 6, 10_000),
                             [65504, 65519.9, 65520, 1e6, -1e6, 6e-8, 3e-8, 2.98e-8, 0.0, -0.0, 1 + 2**-11,
                              1 + 3 * 2**-11]]).astype(np.float32)
    on_device = torch.from_numpy(values).half().numpy()  # what the pipeline copies back
    with np.errstate(over="ignore"):
        assert np.array_equal(on_device.view(np.uint16), values.astype(np.float16).view(np.uint16))


def test_rafts_batch_holds_what_its_correlation_volumes_fit():
    raft = FlowEstimator("raft", batch_size=32)

    def by_hand(h: int, w: int) -> int:  # 4 bytes x ((h/8)(w/8))^2, a third more for the pyramid
        cells = max(-(-h // 8), 16) * max(-(-w // 8), 16)
        return max(1, min(32, int(RAFT_BATCH_BYTES // (4 * cells**2 * 4 / 3))))

    assert raft.batch_for(1080, 1920) == by_hand(1080, 1920) == 1  # the CNN's 32 would need ~180 GB
    assert raft.batch_for(480, 854) == by_hand(480, 854) == 32
    assert raft.batch_for(720, 1280) == by_hand(720, 1280) < 32
    assert raft.batch_for(64, 80) == 32


def test_uploads_on_the_cpu_copy_nothing():
    backbone = build_backbone("googlenet", "none", "cpu", size=32)
    frames = torch.zeros(2, 40, 40, 3, dtype=torch.uint8)
    assert upload(frames, backbone.device).data_ptr() == frames.data_ptr()
