"""Every stage on SAE sets at the submodules releases use (resid_pre with an SAE on the
embeddings, hook_z, resid_mid), against real interventions on a tiny random model."""

import pytest
import torch

from circuits.attribution.nodes import exact_submodule_effect, node_effects
from circuits.attribution.splice import spliced
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover
from circuits.circuit.edit import Edit, FeatureEdit, edited
from circuits.circuit.faithfulness import faithfulness
from circuits.circuit.graph import nodes_of
from circuits.core.vocab import EMBED_HOOK, Node, flat_act, hook_names, on_flat
from circuits.export.cards import feature_cards, residual_direction
from circuits.export.pictures import layout
from sae.evaluate import evaluate_saes
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model

SETS = {
    "resid_pre": [EMBED_HOOK, "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
    "z+resid_post": hook_names(["z", "resid"], range(2)),
    "resid_mid+mlp": hook_names(["resid_mid", "mlp"], range(2)),
}


@pytest.fixture(scope="module")
def model():
    return tiny_hooked_model()


@pytest.fixture(scope="module")
def task():
    return make_task("ioi", TOK, n=8, split="train")


def _hook_output(model, tokens, hook):
    seen = {}
    with model.hooks(fwd_hooks=[(hook, lambda x, hook: seen.setdefault("x", x.clone()))]):
        model(tokens)
    return seen["x"]


@pytest.mark.parametrize("name", SETS)
def test_splicing_changes_nothing_and_ig_sums_to_each_submodules_exact_effect(model, task, name):
    saes = random_saes(SETS[name])
    plain = model(task.clean)
    with spliced(model, saes) as nodes:
        assert torch.equal(model(task.clean), plain)
    for hook in saes:
        width = saes[hook].cfg.d_sae
        assert nodes[hook].latents.shape == (task.n_examples, task.n_pos, width)
    ig = node_effects(model, saes, task, method="ig", steps=10, progress=False)
    for hook in saes:
        total = (ig.values[hook].latents.sum() + ig.values[hook].error.sum()).item()
        exact = exact_submodule_effect(model, saes, task, hook)
        assert abs(exact) > 1e-4, f"{hook}: the test needs an effect"
        assert total == pytest.approx(exact, rel=0.03, abs=1e-4), hook


@pytest.mark.parametrize("name", SETS)
def test_full_circuit_is_faithful_and_empty_is_not(model, task, name):
    saes = random_saes(SETS[name])
    every = [Node.at(h, p, i) for h in saes for p in range(task.n_pos) for i in [None, *range(saes[h].cfg.d_sae)]]
    full = faithfulness(model, saes, task, every)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-5)
    empty = faithfulness(model, saes, task, [])
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-5)
    if EMBED_HOOK in saes:  # the embeddings are inputs: their SAE's nodes are never ablated
        without = faithfulness(model, saes, task, [n for n in every if not n.is_embed])
        assert without.faithfulness == pytest.approx(1.0, abs=1e-5)


def test_an_edit_of_a_head_latent_moves_hook_z_by_exactly_its_decoder_row(model, task):
    saes = random_saes(SETS["z+resid_post"])
    hook = "blocks.1.attn.hook_z"
    z = _hook_output(model, task.clean, hook)  # [batch, pos, n_heads, d_head]
    assert z.ndim == 4
    f = saes[hook].encode(flat_act(z))
    latent = int((f[:, -1] != 0).float().sum(0).argmax())
    with edited(model, saes, Edit([FeatureEdit(hook, latent, "clamp", 3.0, positions=[task.n_pos - 1])])):
        y = _hook_output(model, task.clean, hook)
    expected = flat_act(z).clone()
    expected[:, -1] += (3.0 - f[:, -1, latent]).unsqueeze(-1) * saes[hook].W_dec[latent]
    assert torch.allclose(flat_act(y), expected, atol=1e-5)
    assert not torch.allclose(y, z)


def test_discover_cards_pictures_and_evaluation_on_heads(model, task):
    saes = random_saes(SETS["z+resid_post"])
    graph = discover(model, saes, task, DiscoverConfig(method="atp", top_n=30), progress=False)
    heads = [n for n in nodes_of(graph).values() if n.submodule.kind == "z"]
    assert heads, "the circuit should hold hook_z nodes"
    keys = [n.feature for n in heads if n.feature is not None][:2]
    cards = feature_cards(model, saes, keys, n_seqs=8, seq_len=16)
    assert set(cards) == set(keys) and all(card.contexts and card.promoted for card in cards.values())
    picture = layout(graph, cards=cards)
    assert any(box.submodule.kind == "z" for box in picture.sites)
    scores = evaluate_saes(model, saes, n_seqs=4, seq_len=16, progress=False).saes["blocks.0.attn.hook_z"]
    assert 0 <= scores.fvu and scores.l0 > 0


def test_a_head_latent_writes_into_the_stream_through_w_o(model, task):
    # the card's promoted tokens read a hook_z latent's row through W_O, as attn_out gets it
    saes = random_saes(SETS["z+resid_post"])
    hook, row = "blocks.1.attn.hook_z", saes["blocks.1.attn.hook_z"].W_dec[3].detach()
    before = _hook_output(model, task.clean, "blocks.1.hook_attn_out")
    with model.hooks(fwd_hooks=[(hook, on_flat(lambda x, hook: x + row))]):
        after = _hook_output(model, task.clean, "blocks.1.hook_attn_out")
    assert torch.allclose(after - before, residual_direction(model, hook, row).expand_as(before), atol=1e-5)
