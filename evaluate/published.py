"""What the papers print: every published result, shipped with glimpse as package data (evaluate/published.csv).

    published_for("softattn", "ucf11")   -> Published(value=84.96, metric="accuracy", source="Sharma 2015 Table 1", ...)

The file is a copy of the lab's reference table (paper, table, model, variant, dataset, protocol, metric,
value in percent, notes); glimpse reads only its own copy, never the reference folder.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: the backbone (and input) each paper's numbers were measured on, as glimpse's backbone registry names it
PAPER_BACKBONES = {"Sharma 2015": "googlenet", "Yan 2017 (CHAM)": "resnet152", "HAN 2016": "vgg16 two-stream",
                   "Quan 2019 (regattn)": "inception_v3", "Teja and Akunuri 2020 (ConvLSTM report)": "vgg16_pool5"}

#: models whose published number is another registered name's: the released-code variant produced Sharma's Table 1
SAME_PUBLISHED = {"softattn_code": "softattn"}


@dataclass(frozen=True)
class Published:
    """One printed result: ``value`` in percent of ``metric`` ("accuracy" or "mAP")."""

    paper: str
    table: str
    model: str
    variant: str
    dataset: str
    protocol: str
    metric: str
    value: float
    notes: str

    @property
    def frame_level(self) -> bool:
        """Whether the number scores each frame's own prediction rather than each video's."""
        return "per-frame" in self.protocol or "frame-level" in self.notes

    @property
    def backbone(self) -> str | None:
        """The backbone the paper measured on (:data:`PAPER_BACKBONES`), None where not recorded."""
        return PAPER_BACKBONES.get(self.paper)

    @property
    def source(self) -> str:
        return f"{self.paper} {self.table}"

    def cell(self, backbone: str | None = None) -> str:
        """How a table shows it, e.g. ``84.96% accuracy (Sharma 2015 Table 1)``, marked "frame-level" where the paper
        scored frames and "on <its backbone>" where that is not ``backbone``, the store's."""
        protocol = f", {self.protocol}" if self.protocol else ""
        marks = ["frame-level"] * self.frame_level
        if backbone and self.backbone and self.backbone != backbone:
            marks.append(f"on {self.backbone}, not {backbone}")
        marked = f" [{'; '.join(marks)}]" if marks else ""
        return f"{self.value:g}% {self.metric} ({self.source}{protocol}){marked}"


@cache
def published_results() -> tuple[Published, ...]:
    """Every row of the shipped results file, in its order."""
    text = resources.files("glimpse.evaluate").joinpath("published.csv").read_text()
    return tuple(Published(**{**row, "value": float(row["value"])}) for row in csv.DictReader(io.StringIO(text)))


def published_for(model: str, dataset: str) -> Published | None:
    """The paper's number for ``model`` on ``dataset``: the model's own paper first (its first table), else any
    paper that reports it (e.g. CHAM's re-implementation of softattn on UCF Sports); None where none does."""
    name = SAME_PUBLISHED.get(model, model)
    rows = [r for r in published_results() if r.model == name and r.dataset == dataset.lower()]
    if not rows:
        return None
    from glimpse.train.models import MODELS

    own = MODELS[model].paper.split(",")[0].split(" ")[0] if model in MODELS else ""
    return next((r for r in rows if own and r.paper.startswith(own)), rows[0])
