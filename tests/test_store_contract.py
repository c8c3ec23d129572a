"""The store contract (store/schema.py): typed metadata that round-trips, a stream registry every stream follows, a
toy stream that one registry entry (and its compute function) makes extractable, storable and verifiable, and old
schema versions refused with the way out."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from extraction import extract
from old_stores import as_schema_1
from store_files import edit_entry
from test_extract import TINY_OPTS

from glimpse.extract.cli import main as extract_main
from glimpse.media.decode import Sampling, decode_video
from glimpse.store import StoreError, open_store
from glimpse.store.cli import main as store_main
from glimpse.store.layout import video_key
from glimpse.store.schema import (
    SCHEMA_VERSION,
    STREAMS,
    ManifestRow,
    SchemaError,
    StoreMeta,
    StreamInfo,
    StreamSpec,
    VideoEntry,
    VideoRecord,
    VideoResult,
    register_stream,
)
from glimpse.store.writer import create_store

RECORDS = [VideoRecord(id=f"c{c}/v{i}", path=f"/v/c{c}{i}.avi", labels=(c,), splits={"1": "test" if i else "train"})
           for c in range(2) for i in range(2)]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_registered_stream_is_complete(name):
    spec = STREAMS[name]
    assert spec.name == name and spec.dtype == "float16"
    assert len(spec.dims) == 4 and spec.dims[0] == "frame"  # (frames, channels or components, y, x)
    module, _, attribute = spec.computed_by.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute)), spec.computed_by
    assert StreamInfo.from_dict(StreamInfo.of(name).to_dict()) == StreamInfo.of(name)


def test_the_registry_refuses_a_second_meaning_and_bad_specs():
    with pytest.raises(SchemaError, match="already registered"):
        register_stream(StreamSpec("rgb", ("frame", "x"), "somewhere:else"))
    with pytest.raises(SchemaError, match="start with 'frame'"):
        StreamSpec("odd", ("channel", "frame"), "m:f")
    with pytest.raises(SchemaError, match="float16"):
        StreamSpec("wide", ("frame", "c", "y", "x"), "m:f", dtype="float64")


def test_the_dataclasses_round_trip_through_json():
    result = VideoResult(status="done", n_frames=2, frame_indices=(0, 5), timestamps=(0.0, 0.2),
                         boxes=((1.0, 2.0, 3.0, 4.0), (1.5, 2.5, 3.5, 4.5)), source={"codec": "h264"},
                         checksums={"rgb": "sha256:00"}, flow_pairs=((0, 1), (5, 6)), flow_computed_at=(120, 160))
    assert VideoResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    meta = StoreMeta(dataset="d", classes=("a", "b"), config={"size": 8}, config_hash="ff",
                     streams={"rgb": StreamInfo.of("rgb", frame_shape=[4, 2, 2], backbone="net")},
                     videos=(ManifestRow("a/1", "a__1", "/a/1.avi", (0, 1), {"1": "train"}),), multi_label=True)
    assert StoreMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    entry = VideoEntry.of(meta.videos[0], result)  # a manifest row plus its result
    assert VideoEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    assert (entry.row, entry.result, entry.label) == (meta.videos[0], result, 0)
    holes = VideoResult(n_frames=1, frame_indices=(0,), timestamps=(None,), boxes=((math.nan,) * 4,))
    stored = json.loads(json.dumps(holes.to_dict(), allow_nan=False))  # NaN is stored as null (JSON has no NaN)
    back = VideoResult.from_dict(stored)
    assert back.timestamps == (None,) and all(math.isnan(v) for v in back.boxes[0])


def test_an_unknown_field_is_a_schema_error_naming_it(tmp_path):
    with pytest.raises(SchemaError, match="video result: unknown field 'colour'"):
        VideoResult.from_dict({"n_frames": 1, "colour": "red"})
    with pytest.raises(SchemaError, match="'classes' is missing"):
        StoreMeta.from_dict({"dataset": "d", "config": {}, "config_hash": "0", "streams": {}, "videos": []})
    with pytest.raises(SchemaError, match="codec 'brotli' is none of zstd, lz4, none"):
        StoreMeta.from_dict({"dataset": "d", "classes": [], "config": {}, "config_hash": "0", "streams": {},
                             "videos": [], "codec": "brotli"})
    writer = create_store(tmp_path / "s", dataset="d", classes=["a", "b"], records=RECORDS, config={},
                          streams={"rgb": {"frame_shape": [1, 1, 1]}})
    with pytest.raises(SchemaError, match="colour"):
        writer.write_video(video_key(RECORDS[0].id), {"rgb": np.zeros((1, 1, 1, 1))}, {"n_frames": 1, "colour": 1})
    assert open_store(tmp_path / "s").videos[0].status == "pending"  # refused before anything was written


def test_multi_label_and_flow_frames_are_stored_and_read_back(tmp_path):
    declared = create_store(tmp_path / "m", dataset="d", classes=["a", "b"], records=RECORDS, config={},
                            streams={"rgb": {"frame_shape": [1, 1, 1]}}, multi_label=True)
    assert open_store(tmp_path / "m").multi_label  # the adapter's word, though every record has one label
    guessed = create_store(tmp_path / "g", dataset="d", classes=["a", "b"], records=RECORDS, config={"x": 1},
                           streams={"rgb": {"frame_shape": [1, 1, 1]}})
    assert not open_store(tmp_path / "g").multi_label
    result = {"n_frames": 2, "frame_indices": [0, 3], "timestamps": [0, 0.1], "flow_pairs": [[0, 1], [3, 4]],
              "flow_computed_at": [24, 32]}
    for writer in (declared, guessed):
        writer.write_video(video_key(RECORDS[1].id), {"rgb": np.ones((2, 1, 1, 1))}, result)
    entry = open_store(tmp_path / "m").video(RECORDS[1].id)
    assert entry.flow_pairs == ((0, 1), (3, 4)) and entry.flow_computed_at == (24, 32)


def toy_energy(frames: np.ndarray) -> np.ndarray:
    """The toy stream's compute function: (T, H, W, 3) uint8 frames -> (T, 1, 2, 2) mean brightness per quadrant."""
    t, h, w, _ = frames.shape
    quads = frames.astype(np.float32).mean(-1).reshape(t, 2, h // 2, 2, w // 2)  # (T, 2, H/2, 2, W/2)
    return quads.mean(axis=(2, 4))[:, None] / 255  # (T, 1, 2, 2)


@pytest.fixture
def toy_stream():
    """A stream registered for one test, then removed from the registry again."""
    spec = register_stream(StreamSpec("toy", ("frame", "value", "y", "x"), f"{__name__}:toy_energy",
                                      "mean brightness per quadrant"))
    try:
        yield spec
    finally:
        STREAMS.pop("toy")


def quadrant_means(frames: np.ndarray) -> np.ndarray:
    """toy_energy written independently: each quadrant's mean over its pixels and three channels, (T, 1, 2, 2)."""
    h, w = frames.shape[1] // 2, frames.shape[2] // 2
    out = np.empty((len(frames), 1, 2, 2))
    for y in range(2):
        for x in range(2):
            out[:, 0, y, x] = frames[:, y * h : (y + 1) * h, x * w : (x + 1) * w].astype(np.float64).mean((1, 2, 3))
    return out / 255


def test_a_registered_toy_stream_is_extracted_stored_read_and_verified(toy_stream, tiny_synthetic, dask_client,
                                                                        tmp_path):
    stores = {path: tmp_path / path for path in ("pipelined", "alone", "sequential")}
    # pipelined next to the batched CNN stream, and on its own both ways (no CNN is built for it)
    for path, streams, sequential in (("pipelined", "rgb,toy", False), ("alone", ["toy"], False),
                                      ("sequential", ["toy"], True)):
        extract("synthetic", str(tiny_synthetic), str(stores[path]), client=dask_client, streams=streams,
                        sequential=sequential, **TINY_OPTS)
        assert {v.status for v in open_store(stores[path]).videos} == {"done"}, path
    pipelined, alone, sequential = (open_store(stores[path]) for path in ("pipelined", "alone", "sequential"))
    assert list(pipelined.streams) == ["rgb", "toy"] and list(sequential.streams) == ["toy"]
    assert pipelined.stream_info["toy"].dims == ("frame", "value", "y", "x")
    assert pipelined.config["streams"] == ["rgb", "toy"]  # part of the config, so of its hash
    for video in pipelined.videos:
        assert video.status == "done", video.error
        frames = decode_video(video.path, Sampling(frames=TINY_OPTS["frames"])).frames  # (T, H, W, 3)
        stored = pipelined.stream(video.id, "toy").read()  # (T, 1, 2, 2) float16
        np.testing.assert_allclose(stored, quadrant_means(frames), atol=1e-3, err_msg=video.id)
        np.testing.assert_array_equal(stored, sequential.read(video.id, "toy"))
        np.testing.assert_array_equal(stored, alone.read(video.id, "toy"))
    runner = CliRunner()
    assert runner.invoke(store_main, ["verify", str(stores["pipelined"])]).exit_code == 0
    victim = pipelined.videos[0]
    edit_entry(stores["pipelined"], victim.key, "toy/c/0/0/0/0", lambda chunk: chunk[:-1] + bytes([chunk[-1] ^ 0xFF]))
    broken = runner.invoke(store_main, ["verify", str(stores["pipelined"])])
    assert broken.exit_code != 0 and victim.id in broken.output  # verify checks the toy stream too


def test_stream_selection_errors_name_the_stream_and_the_fix(tiny_synthetic, tmp_path):
    args = ["--dataset", "synthetic", "--root", str(tiny_synthetic), "--out", str(tmp_path / "s"), "--quiet"]
    unknown = CliRunner().invoke(extract_main, [*args, "--streams", "rgb,audio"])
    assert unknown.exit_code == 2 and "unknown stream 'audio'" in unknown.output and "flow_cnn" in unknown.output
    no_flow = CliRunner().invoke(extract_main, [*args, "--streams", "rgb,flow_cnn"])
    assert no_flow.exit_code == 2 and "flow_cnn is computed from flow: select it too" in no_flow.output
    no_method = CliRunner().invoke(extract_main, [*args, "--streams", "flow"])
    assert no_method.exit_code == 2 and "--flow tvl1" in no_method.output
    assert not (tmp_path / "s").exists()


def test_an_unregistered_stream_is_refused_at_creation(tmp_path):
    with pytest.raises(StoreError, match="unknown stream 'toy'"):
        create_store(tmp_path / "x", dataset="d", classes=["a"], records=RECORDS[:1], config={},
                     streams={"toy": {"frame_shape": [1, 2, 2]}})


def test_an_old_store_is_refused_with_the_upgrade_and_upgraded_in_place(tmp_path):
    store = tmp_path / "old"
    records = [*RECORDS, VideoRecord(id="both", path="/v/both.avi", labels=(0, 1), splits={"1": "train"})]
    create_store(store, dataset="d", classes=["a", "b"], records=records, config={},
                 streams={"rgb": {"frame_shape": [1, 1, 1]}}, multi_label=False)
    as_schema_1(store)  # as glimpse 0.1 wrote it
    with pytest.raises(StoreError, match=f"schema version 1, this glimpse reads version {SCHEMA_VERSION}; "
                                         f"upgrade it with 'python -m glimpse.store upgrade {store}'"):
        open_store(store)
    result = CliRunner().invoke(store_main, ["upgrade", str(store)])
    assert result.exit_code == 0 and f"schema version {SCHEMA_VERSION} (was 1)" in result.output
    assert open_store(store).multi_label  # one video has two labels
    again = CliRunner().invoke(store_main, ["upgrade", str(store)])
    assert again.exit_code == 0 and "already" in again.output
