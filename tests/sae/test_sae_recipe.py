"""The default SAE recipe: same seed -> same weights, the cached default set is retrained when
the recipe or the model changes, the quality bar, and (slow, `make test-slow`) the bar met by
model + SAEs trained from scratch on three seeds."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

import sae.train as T
from circuits.core.determinism import keep_freed_memory
from circuits.loaders import load_saes
from circuits.toy.config import ToyModelConfig
from circuits.toy.model import load_saved_model, train_model
from sae.config import SAETrainConfig
from sae.evaluate import QualityBar, SAEEvaluation, SAEScore, evaluate_saes
from sae.train import train_sae_set
from tests.helpers import tiny_config, tiny_sae_config


def tiny_recipe(**overrides) -> SAETrainConfig:
    """Two hooks of a 1-layer model, 6 steps (3 resampling rounds)."""
    return tiny_sae_config(**{"n_tokens": 6 * 124, **overrides})


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_saved_model(tiny_model_dir)


def set_weights(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a saved SAE set, keyed by hook/name."""
    return {
        f"{path.parent.name}/{name}": tensor
        for path in sorted(folder.glob("*/sae_weights.safetensors"))
        for name, tensor in load_file(str(path)).items()
    }


def test_same_seed_gives_bit_identical_saes_and_another_seed_does_not(tiny_model, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_sae_set(tiny_model, tiny_recipe(seed=seed), tmp_path / name, progress=False)
    a, b, c = (set_weights(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() and len(a) >= 8
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_same_seed_gives_a_bit_identical_model(tmp_path):
    """Big enough a batch (1,024 tokens of width 64) for the embedding gradient's additions to
    be split over threads: without deterministic mode, runs differ in the last bits."""
    cfg = tiny_config(steps=3, batch_size=32, d_model=64, d_mlp=128, checkpoint_every=100)
    a, b = (train_model(cfg, tmp_path / name, progress=False) for name in "ab")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.fixture
def counted_training(monkeypatch):
    """Count the trainings load_saes starts; the default recipe is a tiny one."""
    calls = []
    train = T.train_sae_set

    def counting(model, cfg, folder, **kwargs):
        calls.append(cfg)
        return train(model, cfg, folder, **kwargs)

    monkeypatch.setattr(T, "train_sae_set", counting)
    monkeypatch.setattr(T, "default_config", lambda: tiny_recipe())
    return calls


def test_cached_default_set_is_trained_once_and_again_when_the_recipe_changes(
    tiny_model, tmp_path, counted_training, monkeypatch, capsys
):
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 1
    record = json.loads((tmp_path / "saes-toy" / T.RECORD).read_text())
    assert record["default"] and record["model"] == T.model_fingerprint(tiny_model)

    monkeypatch.setattr(T, "default_config", lambda: tiny_recipe(resample_every=3))
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 2 and counted_training[-1].resample_every == 3
    assert "earlier default recipe" in capsys.readouterr().err


def test_a_record_from_before_a_config_field_existed_is_still_the_default(tiny_model, tmp_path, counted_training):
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    path = tmp_path / "saes-toy" / T.RECORD
    record = json.loads(path.read_text())
    del record["config"]["prefixes"]  # a field added later, at its default
    path.write_text(json.dumps(record))
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 1


def test_cached_set_is_retrained_for_another_model_or_without_a_record(tiny_model, tmp_path, counted_training, capsys):
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    (tmp_path / "saes-toy" / T.RECORD).unlink()
    load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 2 and "training records" in capsys.readouterr().err

    other = train_model(tiny_config(seed=1), tmp_path / "other", progress=False)
    load_saes("toy", other, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 3 and "another model" in capsys.readouterr().err


def test_a_set_trained_there_with_other_options_is_kept(tiny_model, tmp_path, counted_training):
    train_sae_set(tiny_model, tiny_recipe(width=32), tmp_path / "saes-toy", progress=False)
    saes = load_saes("toy", tiny_model, cache_dir=tmp_path, progress=False)
    assert counted_training == []
    assert next(iter(saes.values())).cfg.d_sae == 32


def score(**overrides) -> SAEScore:
    base = dict(l0=16.0, fvu=0.03, dead_frac=0.01, dense_frac=0.0, ce_recovered=0.98, ce_sae=1.02, ce_zero=2.0)
    return SAEScore(**{**base, **overrides})


def evaluation(spliced: float = 0.95, **overrides) -> SAEEvaluation:
    saes = {"blocks.0.hook_mlp_out": score(), "blocks.1.hook_mlp_out": score(**overrides)}
    return SAEEvaluation(saes, spliced, ce_clean=1.0, ce_all_spliced=1.1, ce_all_zero=2.0)


@pytest.mark.parametrize(
    ("overrides", "miss"),
    [
        ({"fvu": 0.081}, "blocks.1.hook_mlp_out: FVU 0.0810, needs <= 0.08"),
        ({"l0": 16.5}, "blocks.1.hook_mlp_out: L0 16.5000, needs <= 16"),
        ({"dead_frac": 0.0505}, "blocks.1.hook_mlp_out: dead 0.0505, needs <= 0.05"),
        (
            {"ce_recovered": 0.949, "ce_sae": 1.051},
            "blocks.1.hook_mlp_out: CE recovered 0.9490, needs >= 0.95 (or a CE increase <= 0.001 nats, not 0.0510)",
        ),
        ({"spliced": 0.899}, "all spliced: CE recovered 0.8990, needs >= 0.9"),
    ],
)
def test_quality_bar_names_each_miss(overrides, miss):
    assert QualityBar().failures(evaluation()) == []
    assert QualityBar().failures(evaluation(**overrides)) == [miss]


def test_quality_bar_forgives_a_low_ratio_only_when_the_hook_costs_nothing():
    """A hook whose zeroing costs 0.003 nats: 0.94 recovered is 0.0002 nats, within the bar."""
    cheap = {"ce_recovered": 0.94, "ce_sae": 1.0002, "ce_zero": 1.003}
    assert QualityBar().failures(evaluation(**cheap)) == []
    assert len(QualityBar().failures(evaluation(**cheap | {"ce_sae": 1.0012}))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_recipe_meets_the_bar_on_every_seed(seed, tmp_path):
    """Model and SAEs trained from scratch with ``seed`` (minutes per seed)."""
    model = train_model(ToyModelConfig(seed=seed), tmp_path / "toy", progress=False)
    saes = train_sae_set(model, SAETrainConfig(seed=seed), tmp_path / "saes", progress=False)
    misses = QualityBar().failures(evaluate_saes(model, saes, progress=False))
    assert not misses, f"seed {seed}: " + "; ".join(misses)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_training_keeps_freed_memory_on_glibc():
    """fit_saes sets it, so the bit-identical trainings above ran with it: speed only."""
    assert keep_freed_memory()
