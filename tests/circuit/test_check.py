"""The attribution check: Pearson r, the per-submodule comparison with exact patching, and
edge weights against exact two-node patching, on a tiny random model."""

import math

import pytest
import torch

from circuits.circuit.check import check_attribution, format_table, pearson
from circuits.core.vocab import hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model


def test_pearson():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert math.isnan(pearson(a, torch.ones(4)))


def test_check_attribution_against_exact_patching():
    model = tiny_hooked_model()
    saes = random_saes(hook_names(["resid", "mlp", "attn"], range(2)))
    task = make_task("ioi", TOK, n=6, split="train")
    result = check_attribution(model, saes, task, n_top=10, n_candidates=20, n_edges=8, progress=False)
    assert set(result.submodules) == set(saes)
    for hook, row in result.submodules.items():
        assert row.n_latents == 10
        # IG summed over a submodule's nodes tracks patching the whole submodule
        assert row.total_ig == pytest.approx(row.total_exact, rel=0.05, abs=1e-3), hook
        assert -1.0 <= row.pearson_ig <= 1.0
    strongest = result.edges["strongest"]
    assert strongest.n == len(strongest.edges) == 8
    exact = torch.tensor([e.exact for e in strongest.edges])
    assert pearson(torch.tensor([e.ig for e in strongest.edges]), exact) == pytest.approx(strongest.pearson_ig)
    as_json = result.to_dict()
    assert set(as_json["edges"]["strongest"]["edges"][0]) == {"from", "to", "ig", "atp", "exact"}
    text = format_table(result)
    assert all(hook in text for hook in saes) and "edges (strongest, 8)" in text
