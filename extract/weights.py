"""Weights files of the extraction stage's networks (backbones, RAFT): torchvision's offline hub cache, state_dict files
checked against the architecture, and the sha256 that identifies a file in a store's config."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

from glimpse.errors import GlimpseError


class WeightsNotAvailable(GlimpseError, RuntimeError):
    """Pretrained weights are not in torch's hub cache and this tool never downloads them."""


def cached_weights_file(weights: WeightsEnum) -> Path:
    """Path of the cached file of torchvision ``weights``; raise :class:`WeightsNotAvailable` if absent.

    The file name is the basename of ``weights.url``, looked up in ``torch.hub.get_dir()/checkpoints``,
    where ``torch.hub.load_state_dict_from_url`` would have put it.
    """
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    filename = Path(urlparse(weights.url).path).name
    path = directory / filename
    if not path.is_file():
        raise WeightsNotAvailable(
            f"{weights}: {filename} is not in {directory} and glimpse does not download weights. "
            f"Fetch {weights.url} on a machine with internet and put it in {directory} "
            f"(torch's hub checkpoints directory; set TORCH_HOME to move it), or use weights='none' "
            f"or a state_dict path."
        )
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a ``state_dict`` file with ``torch.load(weights_only=True)``; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a torch state_dict file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state_dict (a dict of name -> tensor)")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{path}: not a plain state_dict: key {key!r} holds a {type(value).__name__}, not a tensor "
                f"(save model.state_dict(), not a training checkpoint)"
            )
    return state


def check_state_dict(
    expected: dict[str, Tensor], state: dict[str, Tensor], source: str, optional_prefixes: tuple[str, ...] = ()
) -> dict[str, Tensor]:
    """``state`` without its ``optional_prefixes`` keys, after refusing any missing, unexpected or mis-shaped key.

    ``expected`` is the model's own ``state_dict()`` (meta tensors do). Keys under ``optional_prefixes``
    (classifier heads) are dropped whether present or not; ``num_batches_tracked`` buffers may be
    missing (older checkpoints). ``source`` names the file in the error.
    """
    state = {k: v for k, v in state.items() if not k.startswith(optional_prefixes)}
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state and not k.startswith(optional_prefixes)]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{what}: {', '.join(keys[:5])}{more}")
    if problems:
        raise ValueError(f"{source}: does not fit the torchvision architecture: " + "; ".join(problems))
    return state


def load_checked_state_dict(
    model: nn.Module, state: dict[str, Tensor], source: str, optional_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``model`` after :func:`check_state_dict`; clear errors name ``source``."""
    model.load_state_dict(check_state_dict(model.state_dict(), state, source, optional_prefixes), strict=False)
