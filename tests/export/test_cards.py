"""Feature cards on a tiny random model: the contexts are where the latent fires most."""

import torch
from transformer_lens import HookedTransformer

from circuits.core.vocab import Latent
from circuits.export.cards import feature_cards
from sae.saeset import SAESet
from tasks.corpus import corpus_tokens
from tests.helpers import random_saes, tiny_hooked_model

HOOK = "blocks.0.hook_resid_post"


def tiny_model_and_sae() -> tuple[HookedTransformer, SAESet]:
    return tiny_hooked_model(n_layers=1), random_saes([HOOK])


def test_contexts_highlight_the_strongest_activations():
    model, saes = tiny_model_and_sae()
    n_seqs, seq_len = 8, 16
    tokens = corpus_tokens(model.tokenizer, "feature-cards", n_seqs, seq_len)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        acts = saes[HOOK].encode(cache[HOOK])[:, 1:]  # BOS skipped, as in the cards
    latents = acts.flatten(0, 1).max(0).values.topk(3).indices.tolist()
    cards = feature_cards(
        model, saes, [Latent(HOOK, i) for i in latents], n_seqs=n_seqs, seq_len=seq_len, top=4, batch_size=3
    )
    assert set(cards) == {Latent(HOOK, i) for i in latents}
    for latent in latents:
        card, col = cards[Latent(HOOK, latent)], acts[..., latent]
        assert card.contexts and abs(card.contexts[0]["activation"] - col.max().item()) < 1e-4
        assert abs(card.max_activation - col.max().item()) < 1e-4
        shown = [c["activation"] for c in card.contexts]
        assert shown == sorted(shown, reverse=True)
        for c in card.contexts:
            # the highlighted token is one where the latent takes the shown activation
            where = ((col - c["activation"]).abs() < 1e-4).nonzero().tolist()
            assert any(model.to_single_str_token(int(tokens[s, p + 1])) == c["tokens"][c["index"]] for s, p in where)
        assert card.description.split(" · ")[0] == card.contexts[0]["tokens"][card.contexts[0]["index"]]


def test_cards_are_keyed_by_the_position_free_latent():
    from circuits.circuit.graph import nodes_of
    from circuits.core.vocab import Node
    from circuits.export.cards import latent_keys
    from tests.helpers import card, toy_graph

    node = Node.at("blocks.0.hook_mlp_out", 3, 5)
    assert node.feature == Latent("blocks.0.hook_mlp_out", 5) == Node.at("blocks.0.hook_mlp_out", None, 5).feature
    assert node.feature.id == "blocks.0.hook_mlp_out/5" and Node.at("blocks.0.hook_mlp_out", 3).feature is None
    assert card().feature == Latent("blocks.0.hook_mlp_out", 5)
    g = toy_graph()
    assert latent_keys(g) == sorted({n.feature for n in nodes_of(g).values() if n.feature is not None})
    assert latent_keys(g) == [
        Latent("blocks.0.hook_attn_out", 9),
        Latent("blocks.0.hook_mlp_out", 5),
        Latent("blocks.1.hook_resid_post", 7),
    ]
