"""Latent interpretability against the generator's concepts (sae/interpret.py)."""

import torch

from sae.interpret import Interpretability, interpretability, match_latents, matched_share
from sae.saeset import SAESet
from tasks.concepts import Concepts, labelled_corpus
from tests.helpers import TOK, tiny_hooked_model


def test_a_latent_active_exactly_on_a_concept_matches_it_and_a_random_one_does_not():
    _, labels = labelled_corpus(TOK, "interp", 32, 32)
    concepts = Concepts.of(labels)
    exact = concepts.holds("class=name")
    noise = torch.rand(len(labels), generator=torch.Generator().manual_seed(0)) < exact.float().mean()
    half = exact & (torch.arange(len(labels)) % 2 == 0)  # fires on half of the concept only
    active = torch.stack([exact, noise, half, torch.zeros_like(exact)], dim=1)
    m = match_latents(active, concepts)
    assert m.f1[0] == 1.0 and concepts.holds(m.concept[0]).equal(exact)
    assert m.precision[0] == 1.0 and m.recall[0] == 1.0
    assert m.f1[1] < 0.5 and m.f1[2] < 0.8 and m.precision[2] == 1.0
    assert m.concept[3] == "" and not m.alive[3]
    assert m.matched().tolist() == [True, False, False, False] and m.matched_fraction() == 1 / 3


def planted_sae(model, word: str):
    """An SAE at blocks.0.hook_resid_pre whose latent 0 reads a direction only ``word``'s
    embedding has (every other embedding and the positions made orthogonal to it) and
    latent 1 a random direction."""
    from sae_lens import StandardSAE, StandardSAEConfig

    d = model.cfg.d_model
    e = torch.nn.functional.normalize(torch.randn(d), dim=0)
    with torch.no_grad():
        w_e, w_pos = model.embed.W_E, model.pos_embed.W_pos
        w_e -= torch.outer(w_e @ e, e)
        w_pos -= torch.outer(w_pos @ e, e)
        w_e[TOK.get_vocab()[word]] += 2.0 * e
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = e
        sae.b_enc[0] = -1.0  # fires where the projection is 2, not where it is 0
        sae.W_enc[:, 1] = torch.randn(d)
        sae.b_enc[1] = 0.0
    return SAESet({"blocks.0.hook_resid_pre": sae})


def test_a_planted_direction_in_a_real_sae_matches_its_word():
    model = tiny_hooked_model()
    saes = planted_sae(model, "the")
    result = interpretability(model, saes, n_seqs=32, seq_len=32, progress=False)
    m = result.hooks["blocks.0.hook_resid_pre"]
    assert result.concept_of("blocks.0.hook_resid_pre", 0) == ("word=the", 1.0)
    assert m.f1[1] < 0.8 and result.is_matched("blocks.0.hook_resid_pre", 0)
    assert result.matched_fraction() == 0.5
    assert result.to_dict()["hooks"]["blocks.0.hook_resid_pre"]["concept"][0] == "word=the"


def test_matched_share_splits_a_circuits_effect():
    m = match_latents(torch.tensor([[1, 0], [1, 1]]).bool(), Concepts(["c"], 2, torch.eye(1, 2).to_sparse()))
    interp = Interpretability({"h": m}, 2, 1, 0.0, threshold=0.6)
    assert interp.is_matched("h", 0) and not interp.is_matched("h", 1)
    share = matched_share([("h", 0, 3.0), ("h", 1, -1.0), ("h", None, 4.0)], interp)
    assert share == {"matched": 0.375, "unmatched": 0.125, "error": 0.5}


def test_readability_lists_a_circuits_strongest_latents_with_their_concepts():
    from sae.interpret import readability

    model = tiny_hooked_model()
    saes = planted_sae(model, "the")
    interp = interpretability(model, saes, n_seqs=32, seq_len=32, progress=False)
    h = "blocks.0.hook_resid_pre"
    r = readability([("a", h, 1, 0.5), ("b", h, 0, -2.0), ("e", h, None, 1.5)], interp, top=1)
    assert (r.matched, r.unmatched, r.error) == (0.5, 0.125, 0.375)
    assert [(c.node, c.concept, c.f1) for c in r.strongest] == [("b", "word=the", 1.0)]
    assert r.set_matched == 0.5 and r.to_dict()["strongest"][0]["effect"] == -2.0
