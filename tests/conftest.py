"""Shared fixtures: tiny configs that train in seconds."""

import pytest
import torch

from circuits.model import train_model
from tests.helpers import tiny_config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A trained-and-saved tiny model folder."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    train_model(tiny_config(), folder, progress=False)
    return folder


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
