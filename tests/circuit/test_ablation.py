"""Ablation and faithfulness on tiny models, and a planted circuit whose answer is known."""

import pytest
import torch

from circuits.circuit.ablation import Ablator, ablated, node_masks, reference_values
from circuits.circuit.config import ABLATIONS, AblationSpec
from circuits.circuit.faithfulness import cut, faithfulness, faithfulness_curve, log_sizes
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node, hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, planted, random_saes, tiny_hooked_model

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))


@pytest.fixture(scope="module")
def setup():
    return tiny_hooked_model(), random_saes(HOOKS), make_task("ioi", TOK, n=8, split="train")


def all_nodes(saes, n_pos):
    return [Node.at(h, p, i) for h in saes for p in range(n_pos) for i in [None, *range(saes[h].cfg.d_sae)]]


@pytest.mark.parametrize("how", ABLATIONS)
def test_full_circuit_is_faithful_and_empty_is_not(setup, how):
    model, saes, task = setup
    full = faithfulness(model, saes, task, all_nodes(saes, task.n_pos), AblationSpec(how))
    assert full.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert full.completeness == pytest.approx(0.0, abs=1e-5)
    empty = faithfulness(model, saes, task, [], AblationSpec(how))
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-5)
    assert empty.completeness == pytest.approx(1.0, abs=1e-5)


def last_resid_replaced(model, task, value) -> float:
    """The metric with the last residual stream set to ``value`` (nothing downstream but
    the unembedding): what ablating every node must give, computed directly."""
    hook = "blocks.1.hook_resid_post"
    logits = model.run_with_hooks(task.clean, fwd_hooks=[(hook, lambda x, hook: value.expand_as(x).clone())])
    return task.metric_per_example(logits).mean().item()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("how", ABLATIONS)
def test_empty_circuit_equals_a_direct_computation(setup, how, batch_size):
    model, saes, task = setup
    hook = "blocks.1.hook_resid_post"
    _, clean = model.run_with_cache(task.clean, names_filter=[hook])
    _, corrupt = model.run_with_cache(task.corrupt, names_filter=[hook])
    ab = Ablator(model, saes, task, AblationSpec(how, seed=3), batch_size=batch_size)
    if how == "counterfactual":  # every node at its own corrupt value: the corrupt run
        direct = task.metric_per_example(model(task.corrupt)).mean().item()
    elif how == "resample":  # example i scored on example perm[i]'s clean logits
        refs = ab.references()[0][hook].latents  # every example's partner's clean latents
        perm = refs.new_tensor(
            [int((saes[hook].encode(clean[hook]) == r).all(-1).all(-1).nonzero()[0]) for r in refs]
        ).long()
        assert not (perm == torch.arange(task.n_examples)).any()
        direct = task.metric_per_example(model(task.clean)[perm]).mean().item()
    else:
        value = {
            "mean": clean[hook].mean(0),
            "mean_corrupt": corrupt[hook].mean(0),
            "zero": saes[hook].b_dec.detach(),  # no latent and no error: the decoder bias
        }[how]
        direct = last_resid_replaced(model, task, value)
    assert ab.ref.m_empty == pytest.approx(direct, abs=1e-4)
    assert ab.ref.m_model == pytest.approx(task.metric_per_example(model(task.clean)).mean().item(), abs=1e-5)


def test_start_layer_gives_early_layers_for_free(setup):
    model, saes, task = setup
    layer0 = [h for h in saes if h.startswith("blocks.0.")]
    ab = Ablator(model, saes, task, AblationSpec("mean", start_layer=1))
    everything = ab.everything()
    assert ab.metric_removing({h: everything[h] for h in layer0}) == pytest.approx(ab.ref.m_model, abs=1e-6)
    plain = Ablator(model, saes, task, AblationSpec("mean"))
    assert plain.metric_removing({h: everything[h] for h in layer0}) != pytest.approx(plain.ref.m_model, abs=1e-3)
    nothing = Ablator(model, saes, task, AblationSpec("mean", start_layer=2))  # every layer given for free
    assert nothing.ref.m_empty == pytest.approx(nothing.ref.m_model, abs=1e-6)


def test_ablation_hooks_are_removed_also_on_error(setup):
    model, saes, task = setup
    values = reference_values(model, saes, task, AblationSpec("mean"))
    masks = node_masks([Node.at("blocks.0.hook_mlp_out", 3)], saes, task.n_pos)
    plain = model(task.clean)
    with ablated(model, saes, masks, values):
        assert model.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks
        changed = model(task.clean)
    assert not (changed[:, 3:] == plain[:, 3:]).all() and torch.equal(changed[:, :3], plain[:, :3])
    with pytest.raises(RuntimeError, match="boom"), ablated(model, saes, masks, values):
        raise RuntimeError("boom")
    assert not any(model.hook_dict[h].fwd_hooks for h in HOOKS)
    assert torch.equal(model(task.clean), plain)


def test_mean_ablation_of_a_node_uses_its_task_mean(setup):
    model, saes, task = setup
    hook = "blocks.1.hook_resid_post"  # the last hook: nothing upstream of it is ablated
    values = reference_values(model, saes, task, AblationSpec("mean"))
    _, cache = model.run_with_cache(task.clean, names_filter=[hook])
    x = cache[hook]
    f = saes[hook].encode(x)
    e = x - saes[hook].decode(f)
    expected = x + (values[hook].latents[:, 5] - f[..., 5]).unsqueeze(-1) * saes[hook].W_dec[5]
    expected[:, 2] += values[hook].error[2] - e[:, 2]
    masks = node_masks([Node.at(hook, None, 5), Node.at(hook, 2)], saes, task.n_pos)
    seen = {}
    with (
        ablated(model, saes, masks, values),
        model.hooks(fwd_hooks=[(hook, lambda out, hook: seen.setdefault("out", out))]),
    ):
        model(task.clean)
    assert torch.allclose(seen["out"], expected, atol=1e-5)
    assert torch.allclose(values[hook].latents, saes[hook].encode(x).mean(0))
    resample = reference_values(model, saes, task, AblationSpec("resample"))[hook].latents
    assert resample.shape == f.shape and not torch.equal(resample, f)
    assert sorted(resample[:, -1].tolist()) == sorted(f[:, -1].tolist())  # other examples' values


def test_bad_nodes_are_one_line(setup):
    model, saes, task = setup
    with pytest.raises(CircuitsError, match="latent out of range"):
        node_masks([Node.at("blocks.0.hook_mlp_out", 1, 999)], saes, task.n_pos)
    with pytest.raises(CircuitsError, match="no SAE at blocks.5.hook_mlp_out"):
        node_masks([Node.at("blocks.5.hook_mlp_out", 1, 0)], saes, task.n_pos)
    with pytest.raises(CircuitsError, match="unknown ablation 'median'"):
        faithfulness(model, saes, task, [], AblationSpec("median"))


def test_undefined_faithfulness_says_so(setup):
    model, saes, task = setup
    same = task.subset(slice(None))
    same.answer = same.wrong.clone()  # logit diff is 0 everywhere: m(M) = m(empty)
    with pytest.raises(CircuitsError, match="faithfulness is undefined"):
        _ = faithfulness(model, saes, same, [], AblationSpec("mean")).faithfulness


def test_log_sizes():
    assert log_sizes(1) == [1]
    sizes = log_sizes(1000)
    assert sizes[0] == 1 and sizes[-1] == 1000 and sizes == sorted(set(sizes)) and len(sizes) >= 15


def test_planted_circuit_is_found_and_faithful():
    model, saes, task = planted()
    assert task.n_examples >= 1
    from circuits.attribution.nodes import node_effects

    effects = node_effects(model, saes, task, "atp", progress=False)
    hook = "blocks.0.hook_resid_post"
    lat = effects.values[hook].latents
    pos, latent = divmod(int(lat.abs().flatten().argmax()), lat.shape[1])
    assert (pos, latent) == (task.n_pos - 1, 7)
    ranked = [Node.at(hook, pos, latent)]
    f = faithfulness(model, saes, task, ranked, AblationSpec("zero"))
    assert f.faithfulness > 0.9
    level = cut(Ablator(model, saes, task, AblationSpec("zero")), ranked + [Node.at(hook, 3, 0)], target=0.9)
    assert level.size == 1 and level.cut.faithfulness > 0.9
    curve = faithfulness_curve(model, saes, task, ranked, AblationSpec("zero"), n_random=2, progress=False)
    assert curve.curve[-1].n_latents == 1 and curve.faithfulness > 0.9
