"""Extraction stage: decode videos, sample frames, compute flow and CNN conv cubes into a store."""
