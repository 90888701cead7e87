"""Shared fixtures: tiny configs that train in seconds."""

import pytest
import torch

from circuits.model import ToyModelConfig, train_model


def tiny_config(**overrides) -> ToyModelConfig:
    """A 1-layer toy config that trains in about a second."""
    base = dict(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, seq_len=32, steps=6,
                batch_size=4, checkpoint_every=2, warmup=2)
    base.update(overrides)
    return ToyModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A trained-and-saved tiny model folder."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    train_model(tiny_config(), folder, progress=False)
    return folder


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
