"""Attention models learn the synthetic actions from random-weight cubes; content attention finds the target.

A few CPU minutes: 192 real videos (4 classes, 12 frames, 112 x 112, decoys acting out the other
classes) through the real extraction stage (calibrated random GoogLeNet, 4 x 4 grid), then each
model trains with validation held out by group and its best checkpoint is scored on the 60 test
videos. The runs are deterministic on one machine; the margins cover other machines'
floating-point paths.

- Accuracy: chance is 0.25 and the bar 0.45. Measured (training seed 1): softattn 0.60, regattn
  0.58, and the pooled baseline avgpool_lstm 0.58: random-weight cubes carry the class in pooled
  statistics too, so accuracy alone cannot show that attention helps.
- Localisation: convattn computes its map from the frame itself (Eq. 8 of CHAM), so it can find a
  target that starts anywhere; softattn and regattn compute theirs from the previous hidden state
  alone and stay near uniform here (softattn: mass in box 0.026 against 0.026). Measured for
  convattn with training seeds 0, 1, 2: attention mass in the box 0.087 / 0.064 / 0.069 and
  pointing 0.138 / 0.108 / 0.087, against 0.026 and 0.029 for uniform attention (2.5x to 4.8x);
  the test asks for 1.5x on both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from extraction import extract

from glimpse.evaluate.report import evaluate_run
from glimpse.extract.synth import SynthConfig, make_synthetic
from glimpse.train.loop import train_model

pytestmark = pytest.mark.slow

SYNTH = SynthConfig(classes=4, per_class=48, frames=12, size=112, seed=3)
CHANCE = 1 / SYNTH.classes
BAR = 0.45
#: convattn's attention mass in the box and pointing-game hit rate must reach this multiple of uniform attention's
LOCALISATION_MARGIN = 1.5


@pytest.fixture(scope="module")
def synthetic_store(dask_client, tmp_path_factory) -> Path:
    root = make_synthetic(tmp_path_factory.mktemp("accuracy") / "data", SYNTH)
    out = root.parent / "store"
    summary = extract("synthetic", str(root), str(out), client=dask_client, backbone="googlenet",
                              weights="none", size=112, frames=12, batch_size=16)
    assert not summary.failed
    return out


@pytest.mark.parametrize("model", ["softattn", "regattn"])
def test_attention_models_learn_the_synthetic_actions_well_above_chance(model, synthetic_store, tmp_path):
    result = train_model(synthetic_store, model, tmp_path / model, epochs=30, batch_size=8, lr=1e-3, seed=1,
                         patience=10, workers=0, progress=False, val_fraction=0.15,
                         model_args={"hidden": 64})  # regattn: N = 2
    assert result.best_val_score is not None
    assert result.test_accuracy >= BAR > CHANCE, f"{model}: test accuracy {result.test_accuracy:.3f}"


def test_content_attention_trained_on_the_synthetic_actions_looks_at_the_target(synthetic_store, tmp_path):
    """convattn's maps put well above uniform attention's share on the target's box, and point into it."""
    run = tmp_path / "convattn"
    train_model(synthetic_store, "convattn", run, epochs=30, batch_size=8, lr=3e-4, seed=1, patience=10, workers=0,
                progress=False, val_fraction=0.15,
                model_args={"hidden": 32},  # the demo's settings (glimpse.experiments.DEMO_PER_MODEL)
                sampling="windows", lr_drop_step=0, standardize="mean_std")  # the settings the margins were measured
    # with (convattn's defaults became CHAM's baseline recipe: random clips, CHAM's drop, rms standardization)
    place = evaluate_run(run, figures=0)["localization"]
    assert place["videos"] == 60 and place["frames"] == 60 * SYNTH.frames
    ratios = {"mass": place["mass"] / place["uniform_mass"], "pointing": place["hit_rate"] / place["uniform_hit_rate"]}
    assert min(ratios.values()) >= LOCALISATION_MARGIN, f"convattn localisation against uniform: {ratios}, {place}"
