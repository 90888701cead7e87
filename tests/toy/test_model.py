import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import circuits.loaders as L
import circuits.loaders.pretrained as P
import circuits.toy.model as M
from circuits.core.errors import CircuitsError
from circuits.toy.config import ToyModelConfig
from tests.helpers import tiny_config


def test_config_that_cannot_work():
    with pytest.raises(CircuitsError, match="d_model 130 is not divisible by n_heads 4"):
        ToyModelConfig(d_model=130)
    with pytest.raises(CircuitsError, match="seq_len 64 is longer than n_ctx 32"):
        ToyModelConfig(n_ctx=32)
    with pytest.raises(CircuitsError, match="unknown model config field"):
        ToyModelConfig.from_dict({"n_layer": 2})


def test_config_round_trip():
    cfg = tiny_config(seed=5)
    assert ToyModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_save_load_identical_logits(tmp_path):
    model = M.train_model(tiny_config(), tmp_path / "m", progress=False)
    loaded = M.load_saved_model(tmp_path / "m")
    tokens = model.to_tokens("When Mary and John went to the store , John gave a book to")
    assert torch.equal(model(tokens), loaded(tokens))
    assert not (tmp_path / "m.training").exists(), "checkpoints are removed once the model is saved"


def test_resume_gives_the_same_weights(tmp_path):
    cfg = tiny_config(steps=6, checkpoint_every=2)
    M.train_model(cfg, tmp_path / "straight", progress=False)
    assert M.train_model(cfg, tmp_path / "resumed", progress=False, stop_after=3) is None
    assert (tmp_path / "resumed.training" / "state.json").is_file()
    assert not (tmp_path / "resumed").exists()
    # a crash while writing the next checkpoint leaves a .tmp folder: it must be ignored
    (tmp_path / "resumed.training.tmp").mkdir()
    (tmp_path / "resumed.training.tmp" / "model.safetensors").write_bytes(b"half written")
    M.train_model(cfg, tmp_path / "resumed", progress=False)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    M.train_model(tiny_config(), tmp_path / "m", progress=False, stop_after=2)
    with pytest.raises(CircuitsError, match="different model config"):
        M.train_model(tiny_config(d_mlp=128), tmp_path / "m", progress=False)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    with pytest.raises(CircuitsError, match=r"no config.json"):
        M.load_saved_model(model_copy)


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(CircuitsError, match=r"model.safetensors: weights file is missing"):
        M.load_saved_model(model_copy)


def test_corrupt_weights(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CircuitsError, match=r"model.safetensors: corrupt weights file"):
        M.load_saved_model(model_copy)


def test_weights_that_do_not_match_the_config(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["d_mlp"] = 96
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CircuitsError, match=r"has shape .* config needs"):
        M.load_saved_model(model_copy)


def test_config_that_is_not_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(CircuitsError, match=r"config.json: not a valid model config"):
        M.load_saved_model(model_copy)


def test_unknown_model_name():
    with pytest.raises(CircuitsError, match=r"unknown model 'gpt-3'.*close: "):
        L.load_model("gpt-3")


def test_hub_unreachable_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(P, "in_hf_cache", lambda repo: False)

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not be called when the hub is unreachable")

    monkeypatch.setattr(P.HookedTransformer, "from_pretrained", never)
    assert not P.hub_reachable()
    with pytest.raises(CircuitsError, match=r"cannot download 'gpt2'.*hub is unreachable"):
        L.load_model("gpt2")


def test_load_model_from_folder(tiny_model_dir):
    model = L.load_model(str(tiny_model_dir))
    assert model.cfg.n_layers == 1 and model.to_str_tokens("Mary")[-1] == "Mary"


@pytest.mark.parametrize(
    ("config", "record", "why"),
    [
        ({}, {"default": True}, None),  # today's default
        ({"steps": 1100}, {"default": True}, "trained with an earlier default recipe"),
        ({"seed": 3}, {"default": False}, None),  # `circuits train-model --seed 3` into the cache
        ({}, None, "no readable training.json (trained before training records)"),
    ],
)
def test_the_cached_toy_model_is_trained_again_after_a_default_recipe_change(
    tmp_path, tiny_model_dir, monkeypatch, capsys, config, record, why
):
    folder = tmp_path / M.TOY_NAME
    shutil.copytree(tiny_model_dir, folder)
    (folder / M.CONFIG_FILE).write_text(json.dumps({**ToyModelConfig().to_dict(), **config}))
    (folder / M.RECORD_FILE).unlink()
    if record is not None:
        (folder / M.RECORD_FILE).write_text(json.dumps(record))
    calls = []
    monkeypatch.setattr(M, "train_model", lambda cfg, out, progress: calls.append((cfg, out)))
    monkeypatch.setattr(M, "load_saved_model", lambda out, device: out)
    assert L.load_model(M.TOY_NAME, cache_dir=tmp_path) == folder
    assert calls == ([(ToyModelConfig(), folder)] if why else [])
    err = capsys.readouterr().err
    assert (f"{folder}: {why}; training the default model again" in err) if why else err == ""


def test_a_trained_model_records_whether_it_is_the_default_recipe(tiny_model_dir):
    record = json.loads((tiny_model_dir / M.RECORD_FILE).read_text())
    assert record == {"default": False, "bf16": M.use_bf16("auto")}
