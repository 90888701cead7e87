"""The vocabulary: hook names <-> submodules, the direct-effect layout, node ids and attributes."""

import pytest

from circuits.core.errors import CircuitsError
from circuits.core.vocab import (
    BLOCK_KINDS,
    EMBED_HOOK,
    Node,
    Site,
    Submodule,
    hook_names,
    in_forward_order,
    metric_inputs,
    submodules,
)


def test_hook_names_round_trip():
    for hook in ["blocks.3.hook_resid_post", "blocks.0.hook_attn_out", "blocks.12.hook_mlp_out", EMBED_HOOK]:
        assert Submodule.parse(hook).hook == hook
    assert Submodule.parse("blocks.2.hook_mlp_out") == Submodule(2, "mlp")
    assert Submodule.parse(EMBED_HOOK) == Submodule.embed()
    for bad in ["blocks.1.attn.hook_q", "blocks.x.hook_mlp_out", "hook_mlp_out", "blocks.1.hook_z"]:
        with pytest.raises(CircuitsError, match=f"hook '{bad}'"):
            Submodule.parse(bad)
    with pytest.raises(CircuitsError, match="unknown submodule kind 'mlps'"):
        Submodule(1, "mlps")


def test_forward_order():
    assert hook_names(["resid", "attn"], [0, 1]) == [
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_post",
    ]
    shuffled = ["blocks.1.hook_attn_out", "blocks.0.hook_resid_post", EMBED_HOOK, "blocks.0.hook_mlp_out"]
    assert in_forward_order(shuffled) == [
        EMBED_HOOK,
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
    ]
    with pytest.raises(CircuitsError, match="unknown hook kind 'mlps'"):
        submodules(["mlps"], [0])


def test_direct_effect_layout():
    full = set(hook_names(["attn", "mlp", "resid"], range(2)))
    up = [s.hook for s in Submodule(1, "resid").upstream(full)]
    assert up == ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    assert [s.hook for s in Submodule(1, "mlp").upstream(full)] == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
    ]
    assert Submodule(0, "attn").upstream(full) == [Submodule.embed()]
    resid_only = {h for h in full if h.endswith("resid_post")}
    assert Submodule(1, "resid").upstream(resid_only) == [Submodule(0, "resid")]
    # parallel blocks (GPT-NeoX): the MLP reads the block input, not attn_out
    assert Submodule(1, "mlp").upstream(full, parallel=True) == [Submodule(0, "resid")]
    # no residual SAE before it: the embeddings and every output written since
    assert Submodule(1, "attn").upstream({"blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"}) == [
        Submodule.embed(),
        Submodule(0, "mlp"),
    ]


def test_layouts_of_released_sets():
    res_jb = set(hook_names(["resid_pre"], range(3))) | {"blocks.2.hook_resid_post"}
    assert EMBED_HOOK in res_jb  # resid_pre of block 0 is the embeddings (with an SAE)
    assert Submodule.parse("blocks.1.hook_resid_pre").upstream(res_jb) == [Submodule.embed()]
    assert Submodule.parse("blocks.2.hook_resid_post").upstream(res_jb) == [Submodule(2, "resid_pre")]
    assert metric_inputs(res_jb, 3) == [Submodule(2, "resid")]
    # resid_post_{L-1} and resid_pre_L read the same stream: an identity edge
    both = {"blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"}
    assert Submodule(1, "resid_pre").upstream(both) == [Submodule(0, "resid")]
    z_resid = set(hook_names(["z", "resid"], range(2)))
    assert Submodule(1, "resid").upstream(z_resid) == [Submodule(0, "resid"), Submodule(1, "z")]
    assert Submodule(1, "z").upstream(z_resid) == [Submodule(0, "resid")]
    # hook_z is attn_out's only input when both have SAEs; downstream reads attn_out
    z_attn = set(hook_names(["z", "attn", "resid"], range(1)))
    assert Submodule(0, "attn").upstream(z_attn) == [Submodule(0, "z")]
    assert Submodule(0, "resid").upstream(z_attn) == [Submodule.embed(), Submodule(0, "attn")]
    mid = set(hook_names(["resid_mid", "mlp"], range(1)))
    assert Submodule(0, "mlp").upstream(mid) == [Submodule(0, "resid_mid")]
    writers = set(hook_names(["attn", "mlp"], range(2)))
    assert metric_inputs(writers, 2) == [Submodule.embed()] + [
        Submodule.parse(h) for h in sorted(writers, key=lambda h: Submodule.parse(h).order)
    ]


def test_every_release_hook_parses_and_spells_back():
    for hook in [
        "blocks.3.hook_resid_pre",
        "blocks.3.hook_resid_mid",
        "blocks.3.attn.hook_z",
        "blocks.3.hook_resid_post",
    ]:
        assert Submodule.parse(hook).hook == hook
    assert Submodule.parse(EMBED_HOOK).is_embed
    order = [Submodule.parse(h) for h in hook_names(list(BLOCK_KINDS), [1])]
    assert [s.kind for s in sorted(order, key=lambda s: s.order)] == list(BLOCK_KINDS)
    with pytest.raises(CircuitsError, match="blocks.0.attn.hook_q"):
        Submodule.parse("blocks.0.attn.hook_q")
    with pytest.raises(CircuitsError, match="is the embeddings"):
        Submodule(0, "resid_pre")


def test_node_ids_and_attributes_round_trip():
    labels = ["BOS", "S2", "END"]
    latent = Node.at("blocks.3.hook_resid_post", 2, 12, labels)
    error = Node.at("blocks.0.hook_attn_out", 1, None, labels)
    embed = Node.at(EMBED_HOOK, 1, None, labels)
    summed = Node.at("blocks.2.hook_mlp_out", None, 4)
    assert latent.id == "blocks.3.hook_resid_post/12@END"
    assert error.id == "blocks.0.hook_attn_out/err@S2" and error.is_error
    assert embed.id == "embed@S2" and embed.is_embed and not embed.is_error
    assert summed.id == "blocks.2.hook_mlp_out/4@*"
    assert Node.at("blocks.0.hook_mlp_out", 3).id == "blocks.0.hook_mlp_out/err@p3"
    for node in (latent, error, embed, summed):
        attrs = node.attrs(-0.5, 2.0)
        back = Node.from_attrs(attrs)
        assert back == node and back.id == node.id
    a = latent.attrs(-0.5, 2.0)
    assert (a["layer"], a["kind"], a["latent"], a["is_error"], a["pos_label"]) == (3, "resid", 12, False, "END")
    assert embed.attrs(1.0, 1.0)["kind"] == "embed" and embed.attrs(1.0, 1.0)["layer"] == -1
    # circuit files written before embeddings carried their hook
    old = {"hook": None, "kind": "embed", "latent": None, "position": 1, "pos_label": "S2"}
    assert Node.from_attrs(old) == embed
    # the label is how a position is shown, not part of the node's identity
    assert Node(Site(Submodule(3, "resid"), 2, "x"), 12) == latent
