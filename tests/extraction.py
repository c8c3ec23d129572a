"""The tests' shorthand for the extraction API: one call with the command line's option names."""

from __future__ import annotations

import dataclasses
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
