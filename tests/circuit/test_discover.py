"""Discovery end to end on tiny random models: the graph agrees with the attribution it is
built from, exact patching, and the edge computation; bad input is one clear error."""

import warnings

import pytest
import torch

from circuits.attribution.edges import edges_into, upstream_hooks
from circuits.attribution.nodes import exact_effects, node_effects
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover, example_record
from circuits.circuit.graph import METRIC, load_graph, nodes_of, save_graph
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.vocab import EMBED_HOOK, Node, hook_names, metric_inputs
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))


@pytest.fixture(scope="module")
def setup():
    return tiny_hooked_model(), random_saes(HOOKS), make_task("ioi", TOK, n=8, split="train")


def _key(graph, n) -> Node:
    return Node.from_attrs(graph.nodes[n])


def _effect(effects, node: Node) -> torch.Tensor:
    v = effects.values[node.hook]
    return v.error[node.position] if node.latent is None else v.latents[node.position, node.latent]


def test_discovered_graph_is_consistent(setup, tmp_path):
    model, saes, task = setup
    graph = discover(model, saes, task, DiscoverConfig(method="atp", node_threshold=0.02, top_n=80), progress=False)
    atp = node_effects(model, saes, task, "atp", progress=False)
    total = record_of(graph).total_effect
    assert graph.number_of_edges() > 0 and METRIC in graph
    for n, a in graph.nodes(data=True):
        if n == METRIC:
            continue
        expected = _effect(atp, _key(graph, n))
        assert a["effect"] == pytest.approx(expected.item(), abs=1e-6)
        assert abs(a["effect"]) >= 0.02 * abs(total)
        assert graph.out_degree(n) > 0  # every node reaches the metric
    # edges into the metric carry the effect of the last residual stream's nodes
    for u, _, w in graph.in_edges(METRIC, data="weight"):
        assert graph.nodes[u]["hook"] == "blocks.1.hook_resid_post" and w == graph.nodes[u]["effect"]
    back = load_graph(save_graph(graph, tmp_path / "circuit.json"))
    assert sorted(back.edges(data="weight")) == sorted(graph.edges(data="weight"))
    assert record_of(back) == record_of(graph)  # the example and everything else


def test_example_record_is_the_first_prompt_and_the_models_probabilities(setup):
    model, _, task = setup
    example = example_record(model, task, top=3)
    assert example.prompt_tokens == model.to_str_tokens(task.clean[0])
    assert example.corrupt_tokens == model.to_str_tokens(task.corrupt[0])
    probs = model(task.clean[:1])[0, -1].softmax(-1)
    answer = int(task.answer[0, 0])
    assert example.answer == TOK.decode([answer])
    assert example.answer_prob == pytest.approx(probs[answer].item(), abs=1e-6)
    assert [p for _, p in example.top_outputs] == pytest.approx(probs.topk(3).values.tolist(), abs=1e-6)


def test_graph_edges_match_edges_into(setup):
    model, saes, task = setup
    graph = discover(model, saes, task, DiscoverConfig(method="atp", top_n=60, edge_threshold=0.0), progress=False)
    hook = "blocks.1.hook_resid_post"
    targets = [n for n in graph if graph.nodes[n].get("hook") == hook]
    assert targets
    dense = edges_into(model, saes, task, hook, [_key(graph, n) for n in targets])
    for t, n in enumerate(targets):
        for u, _, w in graph.in_edges(n, data="weight"):
            src = _key(graph, u)
            weights = dense.weights[src.hook].map(lambda x, t=t: x[t])
            expected = weights.error[src.position] if src.latent is None else weights.latents[src.position, src.latent]
            assert w == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)


def test_exact_method_is_exact_patching(setup):
    model, _, task = setup
    saes = random_saes(["blocks.0.hook_resid_post"], d_sae=16, k=2)
    graph = discover(model, saes, task, DiscoverConfig(method="exact", node_threshold=0.0, top_n=30), progress=False)
    nodes = [n for n in graph if n != METRIC]
    assert nodes
    exact = exact_effects(model, saes, task, [_key(graph, n) for n in nodes])
    assert torch.allclose(torch.tensor([graph.nodes[n]["effect"] for n in nodes]), exact, atol=1e-6)
    with pytest.raises(CircuitsError, match="--method exact would patch .* nodes one at a time"):
        discover(model, saes, task, DiscoverConfig(method="exact", max_exact_nodes=3), progress=False)


def test_tasks_without_templates_sum_over_positions(setup):
    model, saes, task = setup
    plain = task.subset(slice(None))
    plain.position_labels = None
    graph = discover(model, saes, plain, DiscoverConfig(method="atp", top_n=30), progress=False)
    atp = node_effects(model, saes, plain, "atp", progress=False)
    assert all(n == METRIC or n.endswith("@*") for n in graph)
    for n in graph:
        if n != METRIC and graph.nodes[n]["latent"] is not None:
            node = _key(graph, n)
            summed = atp.values[node.hook].latents[:, node.latent].sum()
            assert graph.nodes[n]["effect"] == pytest.approx(summed.item(), abs=1e-6)


def test_kl_metric_needs_ig(setup):
    model, saes, task = setup
    kl = task.with_metric("kl")
    atp = node_effects(model, saes, kl, "atp", progress=False)
    ig = node_effects(model, saes, kl, "ig", steps=4, progress=False)
    hook = "blocks.1.hook_resid_post"
    assert atp.values[hook].latents.abs().max() < 1e-5  # KL is at its minimum on the clean run
    assert ig.values[hook].latents.abs().max() > 1e-4
    assert (ig.values[hook].latents.sum() + ig.values[hook].error.sum()) < 0  # corrupting moves away from clean


def test_nothing_to_explain_warns(setup):
    model, saes, task = setup
    same = task.subset(slice(None))
    same.corrupt = same.clean.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = discover(model, saes, same, DiscoverConfig(method="atp"), progress=False)
    assert any("nothing to explain" in str(w.message) for w in caught)
    assert list(graph) == [METRIC]


@pytest.mark.parametrize(
    "hooks",
    [
        ["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"],  # no residual SAE before block 1
        [EMBED_HOOK, "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],  # gpt2-small-res-jb's kinds
        hook_names(["z", "resid"], range(2)),
        hook_names(["resid_mid", "attn"], range(2)),
    ],
    ids=["partial", "resid_pre", "z+resid_post", "resid_mid+attn"],
)
def test_discover_runs_on_any_mix_of_submodules(setup, hooks):
    model, _, task = setup
    saes = random_saes(hooks)
    graph = discover(model, saes, task, DiscoverConfig(method="atp", node_threshold=0.0, top_n=60), progress=False)
    nodes = nodes_of(graph)
    assert len(nodes) > 5
    for u, d in graph.edges:
        if d == METRIC:
            assert nodes[u].submodule in metric_inputs(saes, model.cfg.n_layers)
        else:  # every edge follows the direct-effect layout
            assert nodes[u].hook in upstream_hooks(nodes[d].hook, saes, model), (u, d)
    assert graph.in_degree(METRIC) > 0
    # an SAE on the embeddings splits the inputs into latents; they are never ablated
    if EMBED_HOOK in saes:
        assert any(n.is_embed and n.latent is not None for n in nodes.values())


def test_a_metric_that_is_not_finite_is_one_error(setup):
    _, saes, task = setup
    model = tiny_hooked_model()
    with torch.no_grad():
        model.unembed.b_U[task.answer[0, 0]] = float("nan")
    with pytest.raises(CircuitsError, match="task ioi: the clean metric is not finite"):
        discover(model, saes, task, progress=False)
    # node attribution checks the metrics before any gradient, so it names the run too
    with pytest.raises(CircuitsError, match="task ioi: the clean metric is not finite"):
        node_effects(model, saes, task, "atp", progress=False)


def test_a_batch_that_does_not_fit_is_halved(setup, monkeypatch):
    import circuits.circuit.discover as d

    model, saes, task = setup
    real = d.first_pass

    def tight(model, saes, task, method, steps, batch_size, progress, **kwargs):
        if batch_size > 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return real(model, saes, task, method, steps, batch_size, progress, **kwargs)

    monkeypatch.setattr(d, "first_pass", tight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = d.discover_fitting(
            model, saes, task, DiscoverConfig(method="atp", top_n=5, batch_size=8), progress=False
        )
    assert record_of(graph).discover["batch_size"] == 2
    assert [str(w.message) for w in caught if "does not fit" in str(w.message)] == [
        "batch size 8 does not fit in memory; retrying with 4",
        "batch size 4 does not fit in memory; retrying with 2",
    ]
    monkeypatch.setattr(d, "first_pass", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    with pytest.raises(CircuitsError, match="one prompt pair at a time does not fit"):
        d.discover_fitting(model, saes, task, DiscoverConfig(method="atp", batch_size=1), progress=False)
