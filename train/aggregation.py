"""How a video's clip scores become its score: the registry of aggregations (``--aggregation``).

"mean" (Sharma et al.): softmax per time step, averaged over steps and over all clips. "vote" (Quan et al., Eq.
13-15): each clip predicts the class of its mean softmax over steps, the video takes the majority (ties go to the
class of higher mean probability). "released_vote" (Sharma's released code, src/actrec.py build_model and
pred_acc): each clip predicts the argmax of its softmax summed over its steps, the video takes the mode of those
votes (ties go to the lowest class index, as scipy.stats.mode). ``last_n`` keeps only each clip's last steps (the
code's ``last_n``) before any aggregation. Multi-label runs score each class by its mean sigmoid, whatever the
aggregation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def mean_scores(probs: torch.Tensor) -> tuple[np.ndarray, int]:
    """(clips, T', classes) probabilities -> their mean over clips and steps, and its top class."""
    mean = probs.mean((0, 1))  # (classes,)
    return mean.numpy(), int(mean.argmax())


def vote_scores(probs: torch.Tensor) -> tuple[np.ndarray, int]:
    """(clips, T', classes) probabilities -> each class's share of the clips' votes, and the majority class."""
    mean = probs.mean((0, 1))  # (classes,)
    votes = torch.bincount(probs.mean(1).argmax(-1), minlength=probs.shape[-1]).float()  # (classes,)
    tied = votes == votes.max()
    return (votes / votes.sum()).numpy(), int(torch.where(tied, mean, torch.full_like(mean, -1.0)).argmax())


def released_vote_scores(probs: torch.Tensor) -> tuple[np.ndarray, int]:
    """(clips, T', classes) probabilities -> each class's share of the clips' votes, and their mode (lowest class on
    a tie); a clip votes for the argmax of its probabilities summed over steps."""
    votes = torch.bincount(probs.sum(1).argmax(-1), minlength=probs.shape[-1]).float()  # (classes,)
    return (votes / votes.sum()).numpy(), int(votes.argmax())  # argmax: the first of the tied


#: aggregation name -> (clips, T', classes) probabilities -> (video scores (classes,), predicted class)
AGGREGATIONS: dict[str, Callable[[torch.Tensor], tuple[np.ndarray, int]]] = {
    "mean": mean_scores, "vote": vote_scores, "released_vote": released_vote_scores}


def aggregate(logits: torch.Tensor, aggregation: str, multi_label: bool, last_n: int = 0) -> tuple[np.ndarray, int]:
    """(clips, T', classes) logits -> video scores (classes,) and the predicted class, from each clip's last
    ``last_n`` steps (0: all)."""
    logits = logits[:, -last_n:] if last_n else logits  # (clips, <= T', classes)
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)  # (clips, T', classes)
    return mean_scores(probs) if multi_label else AGGREGATIONS[aggregation](probs)
