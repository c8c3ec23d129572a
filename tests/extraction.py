"""The tests' shorthand for the extraction API: one call with the command line's option names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glimpse.extract.api import FeatureRequest, RunOptions, extract_dataset
from glimpse.extract.pipeline import Summary

#: extracts the heavy dataset (tests/conftest.py) slowly enough that a kill or a reader lands mid-way
HEAVY_OPTS = {"backbone": "googlenet", "weights": "none", "size": 112, "frames": 16, "batch_size": 8}

FEATURE_FIELDS = {f.name for f in dataclasses.fields(FeatureRequest)}
RUN_FIELDS = {f.name for f in dataclasses.fields(RunOptions)}


def extract(dataset: str, root: str, out: str | None = None, *, client: Any = None, **options: Any) -> Summary:
    """``extract_dataset`` with ``options`` sorted into its FeatureRequest and RunOptions (a TypeError names an
    option that is neither); ``streams`` may be a comma-separated string, as on the command line."""
    unknown = set(options) - FEATURE_FIELDS - RUN_FIELDS
    if unknown:
        raise TypeError(f"not an extraction option: {', '.join(sorted(unknown))}")
    if isinstance(options.get("streams"), str):
        options["streams"] = tuple(name.strip() for name in options["streams"].split(","))
    request = FeatureRequest(dataset, root, **{k: v for k, v in options.items() if k in FEATURE_FIELDS})
    run = RunOptions(out=out, **{k: v for k, v in options.items() if k in RUN_FIELDS})
    return extract_dataset(request, run, client)


def stores_per_backbone(root: Path, make_folder: Callable[[], Path], client: Any,
                        options_of: Callable[[str], dict[str, Any]]) -> Callable[[str], Path]:
    """A function from a backbone's name to its store of the synthetic dataset at ``root`` (extracted with
    ``options_of(name)`` into a folder of ``make_folder``, once per name; no video may fail)."""
    stores: dict[str, Path] = {}

    def store_of(name: str) -> Path:
        if name not in stores:
            out = make_folder() / name
            assert not extract("synthetic", str(root), str(out), client=client, backbone=name,
                               **options_of(name)).failed
            stores[name] = out
        return stores[name]

    return store_of
