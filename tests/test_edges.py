"""Edges against finite differences on a tiny random model."""

import pytest
import torch

from circuits.attribution import clean_grads, encode_at, node_grads, run_batch
from circuits.edges import edges_into, upstream_hooks
from circuits.errors import CircuitsError
from circuits.values import NodeValues
from circuits.vocab import EMBED_HOOK, Node, hook_names
from sae.saeset import SAESet
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
        c, p = encode_at(saes, u, cache_c[u]), encode_at(saes, u, cache_p[u])
        v = c + (p - c) * eps
        values[u] = v.error if u == EMBED_HOOK else saes[u].decode(v.latents) + v.error
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
    g = node_grads(saes, hook, clean_grads(model, saes, run_batch(model, saes, task))[hook])
    g_f, g_e = g.latents, g.error
    f0, e0 = _downstream_value(model, saes, task, hook, 0.0)
    eps = 1e-5
    f1, e1 = _downstream_value(model, saes, task, hook, eps)
    active = (f0[:, -1] != 0).any(0).nonzero().flatten()[:3].tolist()
    targets = [Node.at(hook, task.n_pos - 1, j) for j in active] + [Node.at(hook, task.n_pos - 1), Node.at(hook, 3)]
    edges = edges_into(model, saes, task, hook, targets)
    n = task.n_examples
    for t, target in enumerate(targets):
        pos, latent = target.position, target.latent
        total = sum(w.latents[t].sum() + w.error[t].sum() for w in edges.weights.values())
        if latent is None:
            fd = (g_e[:, pos] * (e1[:, pos] - e0[:, pos])).sum() / eps / n
        else:
            fd = (g_f[:, pos, latent] * (f1[:, pos, latent] - f0[:, pos, latent])).sum() / eps / n
        assert total.item() == pytest.approx(fd.item(), rel=1e-3, abs=1e-7), (hook, pos, latent)


def test_upstream_layout():
    saes = random_saes(HOOKS)
    assert upstream_hooks("blocks.1.hook_resid_post", saes) == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
    ]
    assert upstream_hooks("blocks.0.hook_attn_out", saes) == [EMBED_HOOK]
    with pytest.raises(CircuitsError, match="need an SAE at blocks.0.hook_resid_post"):
        upstream_hooks("blocks.1.hook_attn_out", SAESet({"blocks.1.hook_attn_out": saes["blocks.1.hook_attn_out"]}))
    resid_only = SAESet({h: saes[h] for h in saes if h.endswith("resid_post")})
    assert upstream_hooks("blocks.1.hook_resid_post", resid_only) == ["blocks.0.hook_resid_post"]


def test_batched_backward_equals_one_backward_per_target(setup):
    model, saes, task = setup
    hook = "blocks.1.hook_resid_post"
    targets = [Node.at(hook, task.n_pos - 1, j) for j in range(4)] + [Node.at(hook, task.n_pos - 1)]
    a = edges_into(model, saes, task, hook, targets, batched=True)
    b = edges_into(model, saes, task, hook, targets, batched=False)
    for u in a.weights:
        assert torch.allclose(a.weights[u].latents, b.weights[u].latents, atol=1e-9)
        assert torch.allclose(a.weights[u].error, b.weights[u].error, atol=1e-9)


def test_resid_only_edges_run_through_the_whole_block(setup):
    # Without attn/mlp SAEs, resid_{L-1} -> resid_L goes through attention and MLP.
    model, saes, task = setup
    resid = SAESet({h: saes[h] for h in saes if h.endswith("resid_post")})
    hook = "blocks.1.hook_resid_post"
    g = node_grads(resid, hook, clean_grads(model, resid, run_batch(model, resid, task))[hook])
    g_f, g_e = g.latents, g.error
    eps = 1e-5
    f0, e0 = _downstream_value(model, resid, task, hook, 0.0)
    f1, e1 = _downstream_value(model, resid, task, hook, eps)
    pos = task.n_pos - 1
    latent = int((f0[:, pos] != 0).any(0).nonzero()[0])
    edges = edges_into(model, resid, task, hook, [Node.at(hook, pos, latent), Node.at(hook, pos)])
    assert list(edges.weights) == ["blocks.0.hook_resid_post"]
    w = edges.weights["blocks.0.hook_resid_post"]
    n = task.n_examples
    fd_f = (g_f[:, pos, latent] * (f1[:, pos, latent] - f0[:, pos, latent])).sum() / eps / n
    fd_e = (g_e[:, pos] * (e1[:, pos] - e0[:, pos])).sum() / eps / n
    for t, fd in enumerate([fd_f, fd_e]):
        total = w.latents[t].sum() + w.error[t].sum()
        assert total.item() == pytest.approx(fd.item(), rel=1e-3, abs=1e-7)
        # attention mixes positions: the edge reaches earlier positions too
    assert w.error[1, :pos].abs().sum() > 0


def test_sources_restrict_the_upstream_nodes(setup):
    model, saes, task = setup
    hook = "blocks.1.hook_mlp_out"
    targets = [Node.at(hook, task.n_pos - 1), Node.at(hook, task.n_pos - 1, 0)]
    dense = edges_into(model, saes, task, hook, targets)
    u = "blocks.1.hook_attn_out"
    keep = torch.zeros(task.n_pos, saes[u].cfg.d_sae, dtype=torch.bool)
    keep[task.n_pos - 1, :5] = True
    part = edges_into(
        model,
        saes,
        task,
        hook,
        targets,
        sources={u: NodeValues(keep, torch.zeros(task.n_pos, dtype=torch.bool))},
        batch_size=3,
    )
    part_u, dense_u = part.weights[u], dense.weights[u]
    assert torch.allclose(part_u.latents[:, keep], dense_u.latents[:, keep], atol=1e-9)
    assert part_u.latents[:, ~keep].abs().sum() == 0 and part_u.error.abs().sum() == 0
    other = "blocks.0.hook_resid_post"  # not restricted: all nodes
    assert torch.allclose(part.weights[other].latents, dense.weights[other].latents, atol=1e-9)
    with pytest.raises(CircuitsError, match="out of range"):
        edges_into(model, saes, task, hook, [Node.at(hook, 99, 0)])
