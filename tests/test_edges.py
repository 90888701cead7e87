"""Edges against finite differences on a tiny random model."""

import pytest
import torch

from circuits.attribution import EMBED, metric_grads
from circuits.edges import _encode_nodes, edges_into, upstream_hooks
from circuits.errors import CircuitsError
from sae.saeset import SAESet, hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))


@pytest.fixture(scope="module")
def setup():
    model = tiny_hooked_model()
    # double precision so that finite differences are accurate
    model = model.to(torch.float64, print_details=False)
    saes = random_saes(HOOKS)
    for sae in saes.values():
        sae.to(torch.float64)
    return model, saes, make_task("ioi", TOK, n=4, split="train")


def _downstream_value(model, saes, task, hook, eps):
    """Sum over examples of dm/dd * d, with every upstream node of ``hook`` moved by eps * delta."""
    layer = int(hook.split(".")[1])
    ups = upstream_hooks(hook, saes)
    _, cache_c = model.run_with_cache(task.clean, names_filter=ups, stop_at_layer=layer + 1)
    _, cache_p = model.run_with_cache(task.corrupt, names_filter=ups, stop_at_layer=layer + 1)
    values = {}
    for u in ups:
        (f_c, e_c), (f_p, e_p) = _encode_nodes(saes, u, cache_c[u]), _encode_nodes(saes, u, cache_p[u])
        f, e = f_c + eps * (f_p - f_c), e_c + eps * (e_p - e_c)
        values[u] = e if u == EMBED else saes[u].decode(f) + e
    recorded = {}

    def record(x, hook):
        recorded["x"] = x
    with torch.no_grad(), model.hooks(fwd_hooks=[(u, lambda x, hook, v=values[u]: v) for u in ups] + [(hook, record)]):
        model(task.clean, stop_at_layer=layer + 1)
        f_d = saes[hook].encode(recorded["x"])
        e_d = recorded["x"] - saes[hook].decode(f_d)
    return f_d, e_d


@pytest.mark.parametrize("hook", HOOKS)
def test_edges_into_a_node_sum_to_its_linearised_change(setup, hook):
    model, saes, task = setup
    (g_f,), (g_e,) = metric_grads(model, saes, task, [hook])
    f0, e0 = _downstream_value(model, saes, task, hook, 0.0)
    eps = 1e-5
    f1, e1 = _downstream_value(model, saes, task, hook, eps)
    active = (f0[:, -1] != 0).any(0).nonzero().flatten()[:3].tolist()
    targets = [(task.n_pos - 1, j) for j in active] + [(task.n_pos - 1, None), (3, None)]
    edges = edges_into(model, saes, task, hook, targets)
    n = task.n_examples
    for t, (pos, latent) in enumerate(targets):
        total = (sum(edges.latents[u][t].sum() for u in edges.latents)
                 + sum(edges.errors[u][t].sum() for u in edges.errors))
        if latent is None:
            fd = (g_e[:, pos] * (e1[:, pos] - e0[:, pos])).sum() / eps / n
        else:
            fd = (g_f[:, pos, latent] * (f1[:, pos, latent] - f0[:, pos, latent])).sum() / eps / n
        assert total.item() == pytest.approx(fd.item(), rel=1e-3, abs=1e-7), (hook, pos, latent)


def test_upstream_layout():
    saes = random_saes(HOOKS)
    assert upstream_hooks("blocks.1.hook_resid_post", saes) == [
        "blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    assert upstream_hooks("blocks.0.hook_attn_out", saes) == [EMBED]
    with pytest.raises(CircuitsError, match="need an SAE at blocks.0.hook_resid_post"):
        upstream_hooks("blocks.1.hook_attn_out", SAESet({"blocks.1.hook_attn_out": saes["blocks.1.hook_attn_out"]}))
    resid_only = SAESet({h: saes[h] for h in saes if h.endswith("resid_post")})
    assert upstream_hooks("blocks.1.hook_resid_post", resid_only) == ["blocks.0.hook_resid_post"]


def test_batched_backward_equals_one_backward_per_target(setup):
    model, saes, task = setup
    hook = "blocks.1.hook_resid_post"
    targets = [(task.n_pos - 1, j) for j in range(4)] + [(task.n_pos - 1, None)]
    a = edges_into(model, saes, task, hook, targets, batched=True)
    b = edges_into(model, saes, task, hook, targets, batched=False)
    for u in a.latents:
        assert torch.allclose(a.latents[u], b.latents[u], atol=1e-9)
    for u in a.errors:
        assert torch.allclose(a.errors[u], b.errors[u], atol=1e-9)


def test_resid_only_edges_run_through_the_whole_block(setup):
    # Without attn/mlp SAEs, resid_{L-1} -> resid_L goes through attention and MLP.
    model, saes, task = setup
    resid = SAESet({h: saes[h] for h in saes if h.endswith("resid_post")})
    hook = "blocks.1.hook_resid_post"
    (g_f,), (g_e,) = metric_grads(model, resid, task, [hook])
    eps = 1e-5
    f0, e0 = _downstream_value(model, resid, task, hook, 0.0)
    f1, e1 = _downstream_value(model, resid, task, hook, eps)
    pos = task.n_pos - 1
    latent = int((f0[:, pos] != 0).any(0).nonzero()[0])
    edges = edges_into(model, resid, task, hook, [(pos, latent), (pos, None)])
    assert list(edges.errors) == ["blocks.0.hook_resid_post"]
    n = task.n_examples
    fd_f = (g_f[:, pos, latent] * (f1[:, pos, latent] - f0[:, pos, latent])).sum() / eps / n
    fd_e = (g_e[:, pos] * (e1[:, pos] - e0[:, pos])).sum() / eps / n
    for t, fd in enumerate([fd_f, fd_e]):
        total = edges.latents["blocks.0.hook_resid_post"][t].sum() + edges.errors["blocks.0.hook_resid_post"][t].sum()
        assert total.item() == pytest.approx(fd.item(), rel=1e-3, abs=1e-7)
        # attention mixes positions: the edge reaches earlier positions too
    assert edges.errors["blocks.0.hook_resid_post"][1, :pos].abs().sum() > 0


def test_sources_restrict_the_upstream_nodes(setup):
    model, saes, task = setup
    hook = "blocks.1.hook_mlp_out"
    targets = [(task.n_pos - 1, None), (task.n_pos - 1, 0)]
    dense = edges_into(model, saes, task, hook, targets)
    u = "blocks.1.hook_attn_out"
    keep = torch.zeros(task.n_pos, saes[u].cfg.d_sae, dtype=torch.bool)
    keep[task.n_pos - 1, :5] = True
    part = edges_into(model, saes, task, hook, targets, sources={u: (keep, torch.zeros(task.n_pos, dtype=torch.bool))},
                      batch_size=3)
    assert torch.allclose(part.latents[u][:, keep], dense.latents[u][:, keep], atol=1e-9)
    assert part.latents[u][:, ~keep].abs().sum() == 0 and part.errors[u].abs().sum() == 0
    other = "blocks.0.hook_resid_post"  # not restricted: all nodes
    assert torch.allclose(part.latents[other], dense.latents[other], atol=1e-9)
    with pytest.raises(CircuitsError, match="out of range"):
        edges_into(model, saes, task, hook, [(99, 0)])
