"""Dataset adapters: one module per dataset, each reading its official layout into a :class:`Dataset`.

``DATASETS`` maps a dataset name to its ``load(root, **kwargs)``; :func:`load_dataset` is the one
entry point the extraction stage uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from glimpse.extract.datasets import hmdb51, hollywood2, olympic, synthetic, ucf11, ucf101, ucfsports
from glimpse.extract.datasets.base import Dataset, DatasetError, read_boxes, resolve_inside

DATASETS: dict[str, Callable[..., Dataset]] = {
    "ucf11": ucf11.load,
    "hmdb51": hmdb51.load,
    "ucf101": ucf101.load,
    "hollywood2": hollywood2.load,
    "ucfsports": ucfsports.load,
    "olympic": olympic.load,
    "synthetic": synthetic.load,
}


def load_dataset(name: str, root: str | Path, **kwargs) -> Dataset:
    """Read dataset ``name`` from ``root`` with its adapter; ``kwargs`` go to it (``seed=`` for ucf11, ucfsports)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name](root, **kwargs)


def takes(name: str, parameter: str) -> bool:
    """Whether dataset ``name``'s adapter takes ``parameter``: ``seed`` (it draws its protocol splits at random),
    ``classes`` (it can read only some classes' folders)."""
    return name in DATASETS and parameter in inspect.signature(DATASETS[name]).parameters


__all__ = ["DATASETS", "Dataset", "DatasetError", "load_dataset", "read_boxes", "resolve_inside", "takes"]
