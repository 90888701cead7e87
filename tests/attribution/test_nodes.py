"""Attribution against real interventions on tiny random models."""

import pytest
import torch

from circuits.attribution.nodes import exact_effects, exact_submodule_effect, node_effects
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node, hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model


def test_atp_equals_exact_when_the_metric_is_linear_in_the_node():
    # No LayerNorm: logits (and the logit difference) are linear in the last residual stream,
    # hence in its SAE latents and error.
    model = tiny_hooked_model(normalization=None, n_layers=1)
    hook = "blocks.0.hook_resid_post"
    saes = random_saes([hook])
    task = make_task("ioi", TOK, n=8, split="train")
    atp = node_effects(model, saes, task, method="atp", progress=False)
    v = atp.values[hook]
    top = v.latents.abs().flatten().topk(10).indices
    nodes = [Node.at(hook, int(i) // 64, int(i) % 64) for i in top] + [Node.at(hook, 14), Node.at(hook, 10)]
    exact = exact_effects(model, saes, task, nodes)
    approx = torch.stack(
        [v.latents[n.position, n.latent] if n.latent is not None else v.error[n.position] for n in nodes]
    )
    assert exact.abs().max() > 1e-3, "the test needs non-zero effects"
    assert torch.allclose(approx, exact, atol=1e-4, rtol=1e-3)


def test_ig_sums_to_the_exact_whole_submodule_effect():
    model = tiny_hooked_model()
    hooks = hook_names(["resid", "mlp", "attn"], range(2))
    saes = random_saes(hooks)
    task = make_task("ioi", TOK, n=8, split="train")
    ig = node_effects(model, saes, task, method="ig", steps=10, progress=False)
    for hook in hooks:
        total = (ig.values[hook].latents.sum() + ig.values[hook].error.sum()).item()
        exact = exact_submodule_effect(model, saes, task, hook)
        assert total == pytest.approx(exact, rel=0.02, abs=1e-4), hook


def test_effects_do_not_depend_on_the_batch_size():
    model = tiny_hooked_model()
    saes = random_saes(["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"])
    task = make_task("ioi", TOK, n=6, split="train")
    a = node_effects(model, saes, task, method="atp", batch_size=6, progress=False)
    b = node_effects(model, saes, task, method="atp", batch_size=4, progress=False)
    for hook in saes:
        assert torch.allclose(a.values[hook].latents, b.values[hook].latents, atol=1e-6)
        assert torch.allclose(a.values[hook].error, b.values[hook].error, atol=1e-6)


def test_unknown_method():
    model = tiny_hooked_model(n_layers=1)
    with pytest.raises(CircuitsError, match="unknown attribution method 'eap'"):
        node_effects(
            model, random_saes(["blocks.0.hook_resid_post"]), make_task("ioi", TOK, n=2), method="eap", progress=False
        )


def test_bf16_effects_agree_with_fp32_per_submodule():
    # A latent's effect hinges on which latents the SAE's top-k picks, and bf16 rounding flips
    # close calls (on a CPU with native bf16 the CLI's top node moved from 0.80 to 0.47). A
    # submodule's summed AtP effect, grad . delta x at the hook, does not depend on the SAE's
    # split into latents and error: that is what bf16 products must preserve.
    from circuits.loaders import place

    model = tiny_hooked_model()
    hooks = hook_names(["resid", "mlp", "attn"], range(2))
    saes = random_saes(hooks)
    task = make_task("ioi", TOK, n=8, split="train")

    def per_hook() -> torch.Tensor:
        atp = node_effects(model, saes, task, method="atp", progress=False)
        return torch.tensor([float(atp.values[h].latents.sum() + atp.values[h].error.sum()) for h in hooks])

    fp32 = per_hook()
    place(model, saes, "cpu", "bf16")
    bf16 = per_hook()
    assert fp32.abs().max() > 1e-2, "the test needs non-zero effects"
    assert (bf16 - fp32).abs().max() <= 0.05 * fp32.abs().max() + 1e-3, (fp32, bf16)
