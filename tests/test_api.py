"""The public API: six names, resolved on first use."""

import subprocess
import sys

import pytest

import circuits
from circuits.core.errors import CircuitsError
from tests.helpers import TOK, random_saes, tiny_hooked_model


def test_the_api_names_what_it_exports():
    import circuits.cli  # noqa: F401  (importing every stage must not shadow an API name)
    import circuits.loaders  # noqa: F401

    assert sorted(circuits.__all__) == sorted(circuits.API)
    for name in circuits.__all__:
        assert callable(getattr(circuits, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        circuits.nothing  # noqa: B018


def test_importing_the_package_loads_no_torch():
    code = "import sys, circuits; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_discover_takes_settings_by_name():
    model = tiny_hooked_model(n_layers=1)
    saes = random_saes(["blocks.0.hook_resid_post"])
    task = circuits.make_task("ioi", TOK, n=4)
    graph = circuits.discover(model, saes, task, method="atp", top_n=5, progress=False)
    assert circuits.record_of(graph).discover["method"] == "atp"
    assert len([n for n in graph if n != "metric"]) <= 5
    with pytest.raises(CircuitsError, match="method"):
        circuits.discover(model, saes, task, method="eap", progress=False)
