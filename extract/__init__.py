"""Extraction stage: decode videos, sample frames, compute flow and CNN conv cubes into a store."""

if __name__ != "glimpse.extract":  # the bare folder name would load a second copy of every module
    raise ImportError("extract/ is the package glimpse.extract: import it by that name (see ARCHITECTURE.md)")
