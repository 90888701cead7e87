"""Training actually teaches behaviours: a tiny model learns IOI fast (default suite); the
full embedded model meets its behaviour targets (slow, `make test-slow`)."""

import pytest

from circuits.circuit.evaluate import evaluate_model, evaluate_task
from circuits.toy.config import ToyModelConfig
from circuits.toy.model import train_model
from tasks.builtin import make_task
from tasks.language import Mixture
from tests.helpers import tiny_config


def test_tiny_config_learns_ioi_well_above_chance(tmp_path):
    cfg = tiny_config(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_mlp=128,
        steps=800,
        batch_size=32,
        lr=3e-3,
        warmup=20,
        checkpoint_every=1000,
        mixture=Mixture(ioi=1.0, sva=0.0, years=0.0, induction=0.0, narrative=0.0),
    )
    model = train_model(cfg, tmp_path / "ioi", progress=False)
    result = evaluate_task(model, make_task("ioi", model.tokenizer, n=200, split="train"))
    # chance: 0.5 accuracy, logit diff 0 (both names are equally plausible)
    assert result.accuracy >= 0.9
    assert result.clean_metric >= 2.0
    assert abs(result.corrupt_metric) < 1.0


@pytest.mark.slow
def test_embedded_model_meets_behaviour_targets(tmp_path):
    model = train_model(ToyModelConfig(), tmp_path / "toy", progress=False)
    tasks = evaluate_model(model, n=512).tasks
    assert tasks["ioi"].accuracy >= 0.98 and tasks["ioi"].clean_metric >= 4
    assert abs(tasks["ioi"].corrupt_metric) < 0.5
    assert tasks["sva"].accuracy >= 0.95
    assert tasks["greater_than"].clean_metric >= 0.6
    assert tasks["induction"].clean_metric >= -0.5
