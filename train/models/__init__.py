"""Every recurrent attention model of the papers, in one registry: name -> ModelSpec.

A model is one module under train/models/ plus one line below; tests/test_models.py runs over the
whole registry. Build one with :func:`build_model`; a checkpoint holds the name and
``dataclasses.asdict(model.config)``, and ``build_model(name, **asdict(config))`` rebuilds it.
"""

from __future__ import annotations

from torch import nn

from glimpse.train.models import cham, convattn, convlstm_report, han, regattn, softattn
from glimpse.train.models.base import ModelConfig, ModelOutput, ModelSpec, make_config

MODELS: dict[str, ModelSpec] = {
    "softmax": softattn.SOFTMAX,
    "avgpool_lstm": softattn.AVGPOOL_LSTM,
    "maxpool_lstm": softattn.MAXPOOL_LSTM,
    "softattn": softattn.SOFTATTN,
    "softattn_code": softattn.SOFTATTN_CODE,
    "convattn": convattn.CONVATTN,
    "cham": cham.CHAM_SPEC,
    "han": han.HAN_SPEC,
    "han_noattn": han.HAN_NOATTN,
    "han_spatial": han.HAN_SPATIAL,
    "han_temporal": han.HAN_TEMPORAL,
    "regattn": regattn.REGATTN,
    "convlstm_report": convlstm_report.CONVLSTM_REPORT,
}


def build_model(name: str, *, channels: int, size: int, classes: int, **overrides) -> nn.Module:
    """Build model ``name`` for cubes (T, channels, size, size) and ``classes`` classes.

    ``overrides`` are fields of the model's config (e.g. hidden=1024, blocks=4, lam=1e-4); an
    unknown model or field raises an error that lists the valid ones. The module keeps its config
    as ``model.config``.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(MODELS)}")
    spec = MODELS[name]
    return spec.build(make_config(spec, channels=channels, size=size, classes=classes, **overrides))


__all__ = ["MODELS", "ModelConfig", "ModelOutput", "ModelSpec", "build_model"]
