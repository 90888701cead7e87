"""The fused forward pass computes the HookedTransformer's own loss, gradients and activations."""

import pytest
import torch

import circuits.toy.model as M
from circuits.core.fused import BLOCK_HOOKS, block_activations, fused_hook, fused_supported, training_loss
from sae.train import ActivationBatches
from tasks.tokenizer import build_tokenizer
from tests.helpers import tiny_config, tiny_sae_config


def _perturbed_model(**overrides):
    """A random 2-layer model whose norms and biases are not at their initial 1 / 0."""
    cfg = tiny_config(n_layers=2, n_heads=4, **overrides)
    model = M.build_model(cfg, build_tokenizer())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model, M.training_batch(model.tokenizer, cfg, 0)


def _grads(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS", "RMSPre", None])
@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu"])
def test_fused_loss_and_gradients_equal_transformer_lens(norm, act):
    model, tokens = _perturbed_model(normalization_type=norm, act_fn=act)
    assert fused_supported(model)
    reference = model(tokens, return_type="loss")
    fused = training_loss(model, tokens)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)
    for got, want in zip(_grads(fused, model), _grads(reference, model), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_bf16_products_stay_close_to_the_float32_loss_and_gradient():
    model, tokens = _perturbed_model()
    exact, half = training_loss(model, tokens), training_loss(model, tokens, bf16=True)
    assert exact != half, "bf16 products round differently"
    assert abs(exact - half) < 1e-2 * exact
    flat = [torch.cat([g.flatten() for g in _grads(loss, model)]) for loss in (exact, half)]
    assert torch.cosine_similarity(*flat, dim=0) > 0.99


def test_architectures_it_does_not_compute_fall_back_to_transformer_lens(tmp_path):
    model, _ = _perturbed_model(act_fn="solu_ln")
    assert not fused_supported(model)
    trained = M.train_model(tiny_config(act_fn="solu_ln", steps=2), tmp_path / "m", progress=False)
    assert trained.cfg.act_fn == "solu_ln"


def test_training_with_the_fused_loss_gives_transformer_lens_training(tmp_path, monkeypatch):
    cfg = tiny_config(autocast="off", steps=4)
    fused = M.train_model(cfg, tmp_path / "fused", progress=False)
    monkeypatch.setattr(M, "fused_supported", lambda model: False)
    plain = M.train_model(cfg, tmp_path / "plain", progress=False)
    for (name, got), want in zip(fused.state_dict().items(), plain.state_dict().values(), strict=True):
        if name.endswith("b_K"):
            # The loss does not depend on b_K (softmax ignores a shift shared by a query's
            # scores): its gradient is rounding noise, which Adam scales up to full-size steps.
            continue
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("norm", ["LN", "RMSPre"])
def test_block_activations_equal_run_with_cache(norm):
    model, tokens = _perturbed_model(normalization_type=norm)
    hooks = [f"blocks.{layer}.{name}" for layer in range(2) for name in BLOCK_HOOKS]
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    got = block_activations(model, tokens, hooks)
    assert list(got) == hooks
    for hook in hooks:
        torch.testing.assert_close(got[hook], cache[hook], atol=1e-5, rtol=1e-5, msg=hook)
    assert list(block_activations(model, tokens, ["blocks.0.hook_mlp_out"])) == ["blocks.0.hook_mlp_out"]


def test_sae_batches_use_the_fused_forward_only_for_hooks_it_computes():
    model, _ = _perturbed_model()
    cfg = tiny_sae_config()
    assert ActivationBatches(model, ["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"], cfg).fused
    assert not ActivationBatches(model, ["blocks.0.attn.hook_z"], cfg).fused
    assert not fused_hook("blocks.0.attn.hook_z") and not fused_hook("blocks.x.hook_mlp_out")
    fused = next(ActivationBatches(model, ["blocks.1.hook_mlp_out"], cfg))
    plain = ActivationBatches(model, ["blocks.1.hook_mlp_out"], cfg)
    plain.fused = False
    torch.testing.assert_close(fused, next(plain), atol=1e-5, rtol=1e-5)
