"""The validation engine: streamed over batches it measures what one batch does, in one
process or two, and never runs more than a batch at once; its records keep the circuit
file's shape. Equalities are checked in float64, where a sum in another order moves a result
by ~1e-12 (in float32 on a random model, whose m(M) - m(empty) can be ~0.01, batching alone
moves F by ~1e-5)."""

import os
import random

import pytest
import torch

from circuits.circuit.ablation import Ablator
from circuits.circuit.config import ABLATIONS, AblationSpec, HierarchyConfig
from circuits.circuit.faithfulness import (
    Level,
    Measurement,
    Pool,
    cut,
    faithfulness_curve,
    live_pool,
    measure,
    model_sites,
)
from circuits.circuit.hierarchy import validate_hierarchy
from circuits.core.parallel import run_local
from circuits.core.vocab import Node, Site, hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, ablation_figures, in_float64, random_saes, tiny_hooked_model

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))
N = 8


@pytest.fixture(scope="module")
def setup():
    return (*in_float64(tiny_hooked_model(), random_saes(HOOKS)), make_task("ioi", TOK, n=N, split="train"))


def approx_equal(a, b, path=""):
    """Nested records equal, floats to 1e-9."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            approx_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            approx_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), path
    else:
        assert a == b, path


def circuit_of(task) -> list:
    """Nodes at mixed positions, a whole position, and a site."""
    end = task.n_pos - 1
    return [
        Node.at("blocks.0.hook_mlp_out", 3, 5),
        Node.at("blocks.0.hook_attn_out", end, 1),
        Node.at("blocks.1.hook_resid_post", end),
        Site.at("blocks.1.hook_mlp_out", end),
    ]


# Batches of 3 over 8 pairs (3 + 3 + 2) stream several batches and a short last one under
# every convention; batches of 1 once, for mean (each per-example convention recomputes its
# references per batch, so batch 1 costs 8 spliced passes per measurement: ~20 s for all).
@pytest.mark.parametrize("how, batch_size", [(how, 3) for how in ABLATIONS] + [("mean", 1)])
def test_streamed_equals_one_batch(setup, how, batch_size):
    model, saes, task = setup
    spec = AblationSpec(how, seed=2)
    one, streamed = (Ablator(model, saes, task, spec, batch_size=b) for b in (N, batch_size))
    approx_equal([streamed.ref.m_model, streamed.ref.m_empty], [one.ref.m_model, one.ref.m_empty])
    if one.values is not None:  # per-position references: sums over batches
        for h in saes:
            assert torch.allclose(streamed.values[h].latents, one.values[h].latents, rtol=0, atol=1e-12)
            assert torch.allclose(streamed.values[h].error, one.values[h].error, rtol=0, atol=1e-12)
    pools = [live_pool(ab, model_sites(ab), random.Random(0)) for ab in (one, streamed)]
    assert pools[0].latents == pools[1].latents and pools[0].errors == pools[1].errors
    assert len(pools[0].latents) > 0
    circuit = circuit_of(task)
    approx_equal(
        measure(streamed, circuit, pools[1], 2, 0.5).to_dict(), measure(one, circuit, pools[0], 2, 0.5).to_dict()
    )
    ranking = [*circuit, *pools[0].latents[:30]]
    levels = [
        cut(ab, ranking, 0.6, Pool(list(p.latents), list(p.errors), random.Random(1)), 2)
        for ab, p in zip((one, streamed), pools, strict=True)
    ]
    approx_equal(levels[1].to_dict() | {"seconds": 0.0}, levels[0].to_dict() | {"seconds": 0.0})
    curves = [
        faithfulness_curve(model, saes, task, ranking[:-1], spec, n_random=2, progress=False, batch_size=b).to_dict()
        for b in (N, batch_size)
    ]
    approx_equal(curves[1], curves[0])


def test_every_forward_pass_holds_at_most_one_batch(setup):
    model, saes, task = setup
    sizes: list[int] = []
    original = model.forward

    def spy(tokens, *args, **kwargs):
        if isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long:
            sizes.append(tokens.shape[0])
        return original(tokens, *args, **kwargs)

    model.forward = spy
    try:
        for how in ABLATIONS:
            ab = Ablator(model, saes, task, AblationSpec(how), batch_size=3)
            pool = live_pool(ab, model_sites(ab), random.Random(0))
            measure(ab, circuit_of(task), pool, 1, 0.5)
            cut(ab, circuit_of(task), 0.5, pool, 1)
            end = Site.at("blocks.1.hook_mlp_out", task.n_pos - 1)
            validate_hierarchy(
                model, saes, task, [end], [Node(end, 2)], HierarchyConfig(ablation=AblationSpec(how), batch_size=3)
            )
    finally:
        del model.forward
    assert sizes and max(sizes) <= 3 and 2 in sizes  # the last batch of 8 is 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_two_processes_measure_what_one_does():
    approx_equal(run_local(2, ablation_figures, 3), ablation_figures(3))


def test_records_keep_the_circuit_file_shape():
    point = Measurement(3, 1, 0.5, random_faithfulness=0.1)
    assert point.to_dict() == {"n_nodes": 3, "n_error_nodes": 1, "faithfulness": 0.5, "random_faithfulness": 0.1}
    level = Level("optimised", Measurement(3, 1, 0.9, 0.05, 0.1, True), [point], 1.5)
    assert list(level.to_dict()) == [
        "ranking",
        "n_nodes",
        "n_error_nodes",
        "faithfulness",
        "completeness",
        "random_faithfulness",
        "reached_target",
        "curve",
        "seconds",
    ]
    assert level.size == 4 and level.reached_target and level.to_dict()["curve"] == [point.to_dict()]


def test_a_pool_draws_same_size_circuits_at_most_all_of_it():
    sites = [Site.at("blocks.0.hook_mlp_out", p) for p in range(4)]
    pool = Pool([Node(s, 1) for s in sites], [Node(s, None) for s in sites[:2]], random.Random(0))
    drawn = pool.draw(3, 5)
    assert len(drawn) == 5 and sum(n.latent is None for n in drawn) == 2 and len(set(drawn)) == 5
    assert sorted(Pool(sites, [], random.Random(0)).draw(2, 0), key=lambda s: s.position) != []
