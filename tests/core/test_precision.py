"""bf16 training steps only where the hardware multiplies bf16 natively."""

import json

import pytest
import torch

import circuits.core.precision as P
import circuits.toy.model as M
from circuits.core.errors import CircuitsError
from circuits.toy.config import ToyModelConfig
from sae.config import SAETrainConfig
from tests.helpers import tiny_config


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_auto_is_bf16_only_on_cpus_with_bf16_instructions(cpu_without_bf16, monkeypatch):
    assert not P.native_bf16("cpu")
    assert [P.use_bf16(s) for s in ("auto", "on", "off")] == [False, True, False]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert P.native_bf16("cpu")
    assert [P.use_bf16(s) for s in ("auto", "on", "off")] == [True, True, False]


def test_configs_default_to_auto_and_read_the_old_booleans():
    assert ToyModelConfig().autocast == "auto" and SAETrainConfig().autocast == "auto"
    old = ToyModelConfig().to_dict() | {"autocast": True}
    assert ToyModelConfig.from_dict(old).autocast == "on"
    assert SAETrainConfig(autocast=False).autocast == "off"
    with pytest.raises(CircuitsError, match="unknown model config autocast 'fast': use auto, on, off"):
        ToyModelConfig(autocast="fast")


def test_training_on_a_cpu_without_bf16_multiplies_in_float32(cpu_without_bf16, monkeypatch, tmp_path):
    seen = []
    loss = M.training_loss
    monkeypatch.setattr(M, "training_loss", lambda model, tokens, bf16: seen.append(bf16) or loss(model, tokens, bf16))
    M.train_model(tiny_config(steps=2), tmp_path / "auto", progress=False)
    M.train_model(tiny_config(steps=2, autocast="on"), tmp_path / "on", progress=False)
    assert seen == [False, False, True, True]
    records = [json.loads((tmp_path / name / M.RECORD_FILE).read_text()) for name in ("auto", "on")]
    assert [r["bf16"] for r in records] == [False, True]
