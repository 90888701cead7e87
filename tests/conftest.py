"""Shared fixtures: tiny configs that train in seconds, and a headless browser."""

import shutil

import pytest
import torch

from circuits.toy.model import train_model
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


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker computes on one
    thread: two workers of two threads each on two cores only add switching."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def browser():
    """The system's Chromium in headless mode, driven by Playwright (no browser download);
    skipped, saying why, where either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh page that records console messages and uncaught errors in ``page.problems``
    (the test asserts it is empty) and no network: every request that is not a local file
    or a server on this machine (127.0.0.1) is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.problems = []
    pg.on(
        "console",
        lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    pg.on("pageerror", lambda e: pg.problems.append(f"uncaught: {e}"))

    def offline(route):
        if route.request.url.startswith(("file:", "data:", "blob:", "about:", "http://127.0.0.1")):
            route.continue_()
        else:
            pg.problems.append(f"network request: {route.request.url}")
            route.abort()

    context.route("**/*", offline)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def tiny_sae_dir(tiny_model_dir, tmp_path_factory):
    """A random SAE set for the tiny 1-layer model (all three kinds)."""
    from circuits.core.vocab import hook_names
    from tests.helpers import random_saes

    folder = tmp_path_factory.mktemp("saes") / "set"
    random_saes(hook_names(["resid", "mlp", "attn"], [0]), d_sae=32, k=4).save(folder)
    return folder
