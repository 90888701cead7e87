"""Edges against finite differences on a tiny random model."""

import pytest
import torch

from circuits.attribution.edges import edges_into, upstream_hooks
from circuits.attribution.nodes import clean_grads, encode_at, node_grads, run_batch
from circuits.core.errors import CircuitsError
from circuits.core.values import NodeValues
from circuits.core.vocab import EMBED_HOOK, Node, Submodule, flat_act, hook_names, on_flat
from sae.saeset import SAESet
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))


# The layouts the direct-effect test runs on (docs/design.md, "Edges"): SFC's set, the
# residual-only sets of released SAEs (gpt2-small-res-jb: resid_pre, with an SAE on the
# embeddings, and the last resid_post), attention heads (hook_z) with the residual stream,
# resid_mid, writers without any residual SAE, and hook_z feeding its own attn_out.
LAYOUTS = {
    "sfc": HOOKS,
    "resid_pre": [EMBED_HOOK, "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
    "z+resid_post": hook_names(["z", "resid"], range(2)),
    "resid_mid+resid_pre": hook_names(["resid_pre", "resid_mid"], range(2)),
    "attn+mlp": hook_names(["attn", "mlp"], range(2)),
    "z+attn+mlp": hook_names(["z", "attn", "mlp"], range(2)),
}


def _setup(hooks, parallel=False):
    # double precision so that finite differences are accurate
    model = tiny_hooked_model(parallel=parallel).to(torch.float64, print_details=False)
    saes = random_saes(hooks)
    for sae in saes.values():
        sae.to(torch.float64)
    return model, saes, make_task("ioi", TOK, n=4, split="train")


@pytest.fixture(scope="module")
def setup():
    return _setup(HOOKS)


def _downstream_value(model, saes, task, hook, eps):
    """d's latents and error with every upstream node of ``hook`` moved by eps * delta (the
    rest of the model computed from those values)."""
    ups = upstream_hooks(hook, saes, model)
    stop = Submodule.parse(hook).layer + 1
    _, cache_c = model.run_with_cache(task.clean, names_filter=ups, stop_at_layer=stop)
    _, cache_p = model.run_with_cache(task.corrupt, names_filter=ups, stop_at_layer=stop)
    values = {}
    for u in ups:
        c, p = encode_at(saes, u, flat_act(cache_c[u])), encode_at(saes, u, flat_act(cache_p[u]))
        v = c + (p - c) * eps
        values[u] = saes[u].decode(v.latents) + v.error if u in saes else v.error
    recorded = {}

    @on_flat
    def record(x, hook):
        recorded["x"] = x

    replace = [(u, on_flat(lambda x, hook, v=values[u]: v)) for u in ups]
    with torch.no_grad(), model.hooks(fwd_hooks=replace + [(hook, record)]):
        model(task.clean, stop_at_layer=stop)
        f_d = saes[hook].encode(recorded["x"])
        e_d = recorded["x"] - saes[hook].decode(f_d)
    return f_d, e_d


def _check_edges_against_finite_differences(model, saes, task, hook):
    """The edges into a few nodes of ``hook`` sum to the first-order change of each node when
    all its upstream nodes move from clean to corrupt (by a small step)."""
    g = node_grads(saes, hook, clean_grads(model, saes, run_batch(model, saes, task))[hook])
    g_f, g_e = g.latents, g.error
    f0, e0 = _downstream_value(model, saes, task, hook, 0.0)
    eps = 1e-5
    f1, e1 = _downstream_value(model, saes, task, hook, eps)
    active = (f0[:, -1] != 0).any(0).nonzero().flatten()[:3].tolist()
    targets = [Node.at(hook, task.n_pos - 1, j) for j in active] + [Node.at(hook, task.n_pos - 1), Node.at(hook, 3)]
    # and where the tokens differ: a node there moves even if it sees only its own position
    changed = int((task.clean != task.corrupt).any(0).nonzero()[0])
    targets += [Node.at(hook, changed)] + [
        Node.at(hook, changed, j) for j in (f0[:, changed] != 0).any(0).nonzero()[:2, 0]
    ]
    edges = edges_into(model, saes, task, hook, targets)
    assert list(edges.weights) == upstream_hooks(hook, saes, model)
    n = task.n_examples
    checked = 0
    for t, target in enumerate(targets):
        pos, latent = target.position, target.latent
        total = sum(w.latents[t].sum() + w.error[t].sum() for w in edges.weights.values())
        if latent is None:
            fd = (g_e[:, pos] * (e1[:, pos] - e0[:, pos])).sum() / eps / n
        else:
            fd = (g_f[:, pos, latent] * (f1[:, pos, latent] - f0[:, pos, latent])).sum() / eps / n
        assert total.item() == pytest.approx(fd.item(), rel=1e-3, abs=1e-7), (hook, pos, latent)
        checked += fd.abs().item() > 1e-6
    assert checked >= 2, f"{hook}: the finite differences are all ~0, so the test checks nothing"


@pytest.mark.parametrize("hook", HOOKS)
def test_edges_into_a_node_sum_to_its_linearised_change(setup, hook):
    _check_edges_against_finite_differences(*setup, hook)


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "sfc"])
def test_edges_match_finite_differences_in_every_layout(layout):
    model, saes, task = _setup(LAYOUTS[layout])
    for hook in saes:
        if hook != EMBED_HOOK:
            _check_edges_against_finite_differences(model, saes, task, hook)


def test_edges_match_finite_differences_with_parallel_attention_and_mlp():
    # GPT-NeoX / Pythia blocks: attention and MLP both read the block's input.
    model, saes, task = _setup(HOOKS, parallel=True)
    assert upstream_hooks("blocks.1.hook_mlp_out", saes, model) == ["blocks.0.hook_resid_post"]
    for hook in saes:
        _check_edges_against_finite_differences(model, saes, task, hook)


def test_upstream_layout(setup):
    model, saes, _ = setup
    assert upstream_hooks("blocks.1.hook_resid_post", saes, model) == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
    ]
    assert upstream_hooks("blocks.0.hook_attn_out", saes, model) == [EMBED_HOOK]
    # without the residual SAE before it, attn_1 reads the embeddings and what block 0 wrote
    alone = SAESet({h: saes[h] for h in ("blocks.0.hook_mlp_out", "blocks.1.hook_attn_out")})
    assert upstream_hooks("blocks.1.hook_attn_out", alone, model) == [EMBED_HOOK, "blocks.0.hook_mlp_out"]
    resid_only = SAESet({h: saes[h] for h in saes if h.endswith("resid_post")})
    assert upstream_hooks("blocks.1.hook_resid_post", resid_only, model) == ["blocks.0.hook_resid_post"]


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
