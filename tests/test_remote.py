"""Stores on an S3-compatible server: a real moto server on loopback, s3fs, and a store made by the real extraction
stage then uploaded. The lab's tools, training and evaluation read it by its s3:// URL; a missing fsspec backend, an
unreachable endpoint and missing credentials are one line on stderr and exit status 1 (command lines run in a
subprocess, configured only as the README says: AWS_ENDPOINT_URL and the standard AWS variables)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from extraction import extract

from glimpse.store import open_store
from glimpse.store.catalog import resolve_store, store_summary
from glimpse.store.cli import main as store_main

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parents[1]
OPTS = {"backbone": "googlenet", "weights": "none", "size": 64, "frames": 6, "batch_size": 8}
BUCKET = "lab"
#: the S3 settings of every command here: the standard variables botocore reads, one attempt per request
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "glimpse", "AWS_SECRET_ACCESS_KEY": "glimpse-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port; this module's process talks to it through the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env
    server.stop()


@pytest.fixture(scope="module")
def uploaded(s3, tiny_synthetic, dask_client, tmp_path_factory) -> tuple[Path, str]:
    """(local store, its s3:// URL): the tiny synthetic dataset extracted, then copied to s3://lab/stores/."""
    import s3fs

    local = tmp_path_factory.mktemp("remote") / "stores" / "synthetic"
    summary = extract("synthetic", str(tiny_synthetic), str(local), client=dask_client, **OPTS)
    assert summary.done == 12, summary.report()
    fs = s3fs.S3FileSystem(endpoint_url=s3["AWS_ENDPOINT_URL"], key=s3["AWS_ACCESS_KEY_ID"],
                           secret=s3["AWS_SECRET_ACCESS_KEY"])
    fs.mkdir(BUCKET)
    fs.put(str(local), f"{BUCKET}/stores/synthetic", recursive=True)
    fs.invalidate_cache()
    return local, f"s3://{BUCKET}/stores/synthetic"


def cli(*args: str):
    result = CliRunner().invoke(store_main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def subprocess_cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A command line run as a user runs it, with only ``env``'s settings beyond PATH and PYTHONPATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "GLIMPSE_DEBUG"))}
    return subprocess.run([sys.executable, "-m", module, *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def assert_one_line(done: subprocess.CompletedProcess, *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and all(word in lines[0] for word in words), lines[0]


def test_ls_info_and_verify_read_an_s3_root_and_store(uploaded):
    local, url = uploaded
    listing = cli("ls", f"s3://{BUCKET}/stores")
    assert listing.splitlines()[1].split()[:2] == ["synthetic", "synthetic"] and "s3:/lab" not in listing
    rows = json.loads(cli("ls", f"s3://{BUCKET}/stores/", "--json"))
    assert [row["path"] for row in rows] == [url]
    here = store_summary(local)
    assert {k: rows[0][k] for k in ("done", "total", "raw_bytes", "config_hash")} == \
           {k: here[k] for k in ("done", "total", "raw_bytes", "config_hash")}
    assert abs(rows[0]["disk_bytes"] - here["disk_bytes"]) < 4096  # the same files (.glimpse-claims may differ)
    info = json.loads(cli("info", url, "--json"))
    assert info["path"] == url and info["videos"]["done"] == 12 and info["frames"] == 72
    assert f"OK {url}: 12 done videos verified" in cli("verify", url)
    assert resolve_store(f"s3://{BUCKET}/stores", "synthetic").path == url  # train / table --store-root s3://...


def test_store_read_from_s3_equals_the_local_store(uploaded):
    local, url = uploaded
    here, there = open_store(local), open_store(url)
    assert not there.stream(here.videos[0].id).direct  # zarr reads it: no local chunk files
    for video in here.videos:
        for frames in (None, slice(1, 5), [5, 0, 3]):
            np.testing.assert_array_equal(there.read(video.id, "rgb", frames), here.read(video.id, "rgb", frames))


@pytest.mark.slow
def test_train_and_evaluate_from_an_s3_store(uploaded, s3, tmp_path):
    _, url = uploaded
    run = tmp_path / "run"
    trained = subprocess_cli("glimpse.train", "--store-root", f"s3://{BUCKET}/stores", "--dataset", "synthetic",
                             "--model", "softattn", "--out", str(run), "--epochs", "2", "--batch-size", "4",
                             "--frames", "4", "--workers", "0", "--set", "hidden=16", "--quiet", env=s3)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["store"]["path"] == url
    evaluated = subprocess_cli("glimpse.evaluate", "--run", str(run), "--figures", "0", env=s3)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((run / "evaluation" / "test_metrics.json").read_text())
    assert metrics["videos"] == 6 and metrics["store"] == url and 0 <= metrics["top1"] <= 1


def test_recode_and_export_copy_an_s3_store_to_local_files(uploaded, tmp_path):
    local, url = uploaded
    copy = tmp_path / "copy"
    assert "12 videos copied with codec none" in cli("recode", url, str(copy), "--codec", "none")
    here, there = open_store(local), open_store(copy)
    assert [(v.id, v.status, v.checksums) for v in there.videos] == [(v.id, v.status, v.checksums)
                                                                     for v in here.videos]
    assert f"OK {copy}: 12 done videos verified" in cli("verify", str(copy))
    assert "train 6 videos" in cli("export", url, str(tmp_path / "f.h5"))


def missing_backend() -> tuple[str, str]:
    """(protocol, package) of an fsspec backend that is not installed here."""
    for protocol, package in (("gs", "gcsfs"), ("abfs", "adlfs"), ("oci", "ocifs"), ("oss", "ossfs")):
        if importlib.util.find_spec(package) is None:
            return protocol, package
    pytest.skip("every candidate fsspec backend is installed")


def test_a_missing_backend_is_one_line_naming_the_package(s3):
    protocol, package = missing_backend()
    for args in (("info", f"{protocol}://lab/stores/synthetic"), ("ls", f"{protocol}://lab/stores")):
        done = subprocess_cli("glimpse.store", *args, env=s3)
        assert_one_line(done, f"{protocol}://lab/stores", f"needs the package {package} (pip install {package})")


@pytest.mark.slow
def test_an_unreachable_endpoint_is_one_line_naming_it(uploaded, s3):
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**s3, "AWS_ENDPOINT_URL": closed}
    for module, args in (("glimpse.store", ("info", uploaded[1])), ("glimpse.store", ("ls", f"s3://{BUCKET}/stores")),
                         ("glimpse.store", ("verify", uploaded[1])),
                         ("glimpse.train", ("--store", uploaded[1], "--model", "softattn", "--epochs", "1"))):
        assert_one_line(subprocess_cli(module, *args, env=env), f"s3://{BUCKET}/stores",
                        f"cannot reach the endpoint {closed}")


def test_missing_credentials_are_one_line(uploaded, s3, tmp_path):
    env = {"AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"], "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_DEFAULT_REGION": "us-east-1"}
    assert_one_line(subprocess_cli("glimpse.store", "info", uploaded[1], env=env), uploaded[1],
                    "no credentials for s3://", "AWS_ACCESS_KEY_ID")


def test_refused_credentials_are_one_line(uploaded, s3, monkeypatch):
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks every key from now on
    assert_one_line(subprocess_cli("glimpse.store", "info", uploaded[1], env={**s3, "AWS_ACCESS_KEY_ID": "nobody"}),
                    uploaded[1], "the server refused access")


def test_ls_info_and_training_selection_on_s3_list_no_video_prefix(uploaded, monkeypatch):
    import s3fs

    from glimpse.train.clips import role_videos

    local, url = uploaded
    prefixes: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):  # every request s3fs makes goes through here
        if method == "list_objects_v2":
            prefixes.append(kwargs.get("Prefix", "") + ("" if kwargs.get("Delimiter") == "/" else "**"))
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    s3fs.S3FileSystem.clear_instance_cache()  # no listing served from an earlier test's cache
    cli("ls", f"s3://{BUCKET}/stores")
    info = json.loads(cli("info", url, "--json"))
    selected = role_videos(open_store(url), "1", "train")
    assert info["videos"]["done"] == 12
    assert [v.id for v in selected] == [v.id for v in role_videos(open_store(local), "1", "train")] and selected
    assert prefixes, "the spy saw no LIST request"
    videos = [p for p in prefixes if "/videos" in p]
    recursive = [p for p in prefixes if p.endswith("**") and not p.endswith(("/manifest/**", "/index/**"))]
    assert not videos and not recursive, prefixes  # one folder level at a time, never into videos/
