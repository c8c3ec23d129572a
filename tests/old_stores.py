"""Stores as older glimpse releases wrote them, for the upgrade tests: made by today's writer, then put back in the
older layout (schema 2: the manifest in the root attributes, no manifest/ group, no index/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from glimpse.store import open_store


def as_schema_2(path: str | Path) -> Path:
    """Turn the schema 3 store at ``path`` into the schema 2 store glimpse 0.2 wrote (videos untouched)."""
    path = Path(path)
    rows = [row.to_dict() for row in open_store(path).manifest]
    metadata = path / "zarr.json"
    meta = json.loads(metadata.read_text())
    meta["attributes"]["glimpse"].update(schema_version=2, videos=rows)
    metadata.write_text(json.dumps(meta))
    shutil.rmtree(path / "manifest")
    shutil.rmtree(path / "index")
    return path


def as_schema_1(path: str | Path) -> Path:
    """Turn the schema 3 store at ``path`` into a schema 1 store (schema 2 without ``multi_label``)."""
    as_schema_2(path)
    metadata = Path(path) / "zarr.json"
    meta = json.loads(metadata.read_text())
    del meta["attributes"]["glimpse"]["multi_label"]
    meta["attributes"]["glimpse"]["schema_version"] = 1
    metadata.write_text(json.dumps(meta))
    return Path(path)
