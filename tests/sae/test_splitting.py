"""Feature splitting across widths (sae/splitting.py), on planted dictionaries."""

import torch

from sae.splitting import parents, split_tree


def test_children_are_perturbed_copies_that_fire_inside_their_parent():
    g = torch.Generator().manual_seed(0)
    narrow = torch.randn(4, 16, generator=g)
    # each narrow latent splits into two wide ones: its direction plus a little noise
    wide = narrow.repeat_interleave(2, 0) + 0.1 * torch.randn(8, 16, generator=g)
    tokens = torch.randint(0, 4, (400,), generator=g)
    narrow_active = torch.nn.functional.one_hot(tokens, 4).bool()
    half = torch.rand(400, generator=g) < 0.5  # which child of the token's parent fires
    wide_active = torch.nn.functional.one_hot(2 * tokens + half.long(), 8).bool()
    link = parents(narrow, wide, narrow_active, wide_active)
    assert link.parent.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (link.cosine > 0.95).all() and (link.coactivation == 1.0).all()
    # a direction copied but firing elsewhere is not a child
    elsewhere = wide_active.clone()
    elsewhere[:, 0] = narrow_active[:, 3]
    assert parents(narrow, wide, narrow_active, elsewhere).parent[0] == -1


def test_split_tree_chains_widths():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 8, generator=g)
    b = a.repeat_interleave(2, 0) + 0.3 * torch.randn(4, 8, generator=g)  # siblings apart
    c = b.repeat_interleave(2, 0) + 0.05 * torch.randn(8, 8, generator=g)
    tok = torch.arange(8).repeat(20)
    act = [torch.nn.functional.one_hot(tok // 4, 2), torch.nn.functional.one_hot(tok // 2, 4)]
    act.append(torch.nn.functional.one_hot(tok, 8))
    act = [x.bool() for x in act]
    links = [parents(a, b, act[0], act[1]), parents(b, c, act[1], act[2])]
    tree = split_tree(1, [2, 4, 8], links)
    assert tree.size() == 7 and [k.latent for k in tree.children] == [2, 3]
    assert [g.latent for k in tree.children for g in k.children] == [4, 5, 6, 7]
    assert tree.to_dict()["children"][0]["width"] == 4


def test_label_tree_names_every_node_by_its_widths_matches():
    from sae.interpret import LatentMatches
    from sae.splitting import Split, label_tree

    tree = Split(2, 1, children=[Split(4, 3, 0.9, 0.8), Split(4, 0, 0.7, 0.6, [Split(8, 5, 0.95, 1.0)])])
    z = torch.zeros

    def matches(names):
        return LatentMatches(names, torch.arange(len(names)) / 10, z(len(names)), z(len(names)), z(len(names)))

    label_tree(tree, {2: matches(["a", "b"]), 4: matches(["c", "d", "e", "f"])})
    assert [(n.width, n.latent, n.concept) for n in tree.walk()] == [(2, 1, "b"), (4, 3, "f"), (4, 0, "c"), (8, 5, "")]
    assert abs(tree.children[0].f1 - 0.3) < 1e-6 and tree.to_dict()["children"][1]["children"][0]["latent"] == 5


def test_a_circuits_strongest_inner_latent_gets_its_split_tree_on_a_real_model():
    from sae_lens import StandardSAE, StandardSAEConfig

    from sae.saeset import SAESet
    from sae.splitting import circuit_split_tree
    from tests.helpers import tiny_hooked_model

    model, hook = tiny_hooked_model(), "blocks.0.hook_resid_post"
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(32, 8, generator=g)
    # the wide set: the narrow latents, then 8 near-copies of narrow latent 3 (its children)
    wide_enc = torch.cat([enc, enc[:, 3:4] + 0.05 * torch.randn(32, 8, generator=g)], dim=1)

    def sae(w):
        s = StandardSAE(StandardSAEConfig(d_in=32, d_sae=w.shape[1], apply_b_dec_to_input=False))
        with torch.no_grad():
            s.W_enc.copy_(w)
            s.W_dec.copy_(w.T)
            s.b_enc.zero_()
            s.b_dec.zero_()
        return SAESet({hook: s})

    nodes = [(hook, 3, -2.0), (hook, 12, 5.0), (hook, None, 9.0), (hook, 1, 0.5)]  # 12: only in the wide set
    found = circuit_split_tree(model, [sae(enc), sae(wide_enc)], nodes, n_seqs=16)
    assert found is not None
    at, tree = found
    assert at == hook and (tree.width, tree.latent) == (8, 3)
    assert {c.latent for c in tree.children} == {3, *range(8, 16)} and all(c.width == 16 for c in tree.children)
    assert all(n.concept for n in tree.walk())  # every node alive here, each with its best concept
    assert circuit_split_tree(model, [sae(enc), sae(wide_enc)], [(hook, 12, 1.0)]) is None
