"""The spliced model equals the model: same logits, same gradients at every hook; latents
and error terms are readable nodes. On a tiny random model with random SAEs."""

import pytest
import torch

from circuits.attribution.splice import spliced
from circuits.core.vocab import hook_names
from circuits.toy.model import build_model
from tasks.builtin import make_task
from tests.helpers import random_saes, tiny_config

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model(tiny_config(n_layers=2))
    saes = random_saes(HOOKS, first_seed=0, enc_bias=True, name_hooks=True)  # random, non-trivial biases
    task = make_task("ioi", model.tokenizer, n=6, split="train")
    return model, saes, task


def _metric_and_hook_grads(model, task, extra_context=None, hooks=HOOKS):
    """Metric and dm/d(activation) at ``hooks``, optionally inside another context."""
    acts = {}

    def capture(x, hook):
        x.retain_grad()
        acts[hook.name] = x
        return x

    with model.hooks(fwd_hooks=[(h, capture) for h in hooks]):
        if extra_context is None:
            logits = model(task.clean)
            nodes = None
        else:
            with extra_context as nodes:
                logits = model(task.clean)
    metric = task.metric_per_example(logits).mean()
    metric.backward()
    return logits.detach(), {h: acts[h].grad.clone() for h in hooks}, nodes, metric


def test_spliced_forward_equals_the_model(setup):
    model, saes, task = setup
    plain = model(task.clean)
    with spliced(model, saes):
        spliced_logits = model(task.clean)
    assert torch.equal(plain, spliced_logits)


def test_spliced_gradients_equal_the_model(setup):
    model, saes, task = setup
    _, plain_grads, _, _ = _metric_and_hook_grads(model, task)
    _, splice_grads, nodes, _ = _metric_and_hook_grads(model, task, spliced(model, saes))
    for hook in HOOKS:
        assert torch.allclose(plain_grads[hook], splice_grads[hook], atol=1e-6, rtol=1e-5), hook
        # the error term is added as is, so dm/de is dm/dx at the hook
        assert torch.allclose(nodes[hook].error.grad, splice_grads[hook], atol=1e-6)


def test_latent_gradients_are_the_decoder_projection(setup):
    model, saes, task = setup
    with spliced(model, saes) as nodes:
        logits = model(task.clean)
    metric = task.metric_per_example(logits).mean()
    grads = torch.autograd.grad(metric, [nodes[h].latents for h in HOOKS] + [nodes[h].error for h in HOOKS])
    for i, hook in enumerate(HOOKS):
        d_latent, d_error = grads[i], grads[len(HOOKS) + i]
        expected = d_error @ saes[hook].W_dec.detach().T
        assert torch.allclose(d_latent, expected, atol=1e-6, rtol=1e-4), hook
        assert nodes[hook].latents.shape == (task.n_examples, task.n_pos, 64)
        # nodes hold the real decomposition: D(f) + e == x
        with torch.no_grad():
            recon = saes[hook].decode(nodes[hook].latents) + nodes[hook].error
        _, cache = model.run_with_cache(task.clean, names_filter=[hook])
        assert torch.allclose(recon, cache[hook], atol=1e-5)


def test_hooks_are_removed_after_the_block_even_on_error(setup):
    model, saes, task = setup
    with pytest.raises(RuntimeError, match="boom"):
        with spliced(model, saes):
            assert all(model.hook_dict[h].fwd_hooks for h in HOOKS)
            raise RuntimeError("boom")
    assert not any(model.hook_dict[h].fwd_hooks for h in HOOKS)


def test_sae_lens_error_term_splice_changes_upstream_gradients(setup):
    """The trap in docs/design.md, "Splicing", shown: with sae-lens's error-term splice the gradient
    at an upstream hook differs from the model's; with ours it does not."""
    from sae_lens import HookedSAETransformer

    model, saes, task = setup
    hsae = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer)
    hsae.load_state_dict(model.state_dict())
    upstream = HOOKS[:3]  # layer 0; the SAEs go on every hook of layer 1
    _, plain_grads, _, _ = _metric_and_hook_grads(hsae, task, hooks=upstream)
    for hook in HOOKS[3:]:
        hsae.add_sae(saes[hook], use_error_term=True)
    logits, trap_grads, _, _ = _metric_and_hook_grads(hsae, task, hooks=upstream)
    hsae.reset_saes()
    assert torch.allclose(logits, model(task.clean), atol=1e-5)  # forward is exact...
    hook = "blocks.0.hook_resid_post"
    assert not torch.allclose(trap_grads[hook], plain_grads[hook], atol=1e-4)  # ...gradients are not
