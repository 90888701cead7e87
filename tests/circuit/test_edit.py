"""Model edits: exact effect through the splice, scoped and attached application, JSON."""

import json

import pytest
import torch

from circuits.circuit.edit import Edit, FeatureEdit, attach, edit_from_circuit, edited
from circuits.core.errors import CircuitsError
from circuits.core.vocab import hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model, toy_graph

HOOKS = hook_names(["resid", "mlp", "attn"], range(2))


@pytest.fixture(scope="module")
def setup():
    return tiny_hooked_model(), random_saes(HOOKS), make_task("ioi", TOK, n=4, split="train")


def _hook_output(model, tokens, hook):
    seen = {}
    with model.hooks(fwd_hooks=[(hook, lambda x, hook: seen.setdefault("x", x))]):
        model(tokens)
    return seen["x"]


@pytest.mark.parametrize("action,value", [("zero", None), ("clamp", 3.0), ("scale", 2.0)])
def test_an_edit_changes_the_hook_by_exactly_the_feature(setup, action, value):
    model, saes, task = setup
    hook = "blocks.1.hook_resid_post"
    x = _hook_output(model, task.clean, hook)
    f = saes[hook].encode(x)
    latent = int((f[:, -1] != 0).float().sum(0).argmax())
    edit = Edit([FeatureEdit(hook, latent, action, value, positions=[task.n_pos - 1])])
    with edited(model, saes, edit):
        y = _hook_output(model, task.clean, hook)
    new = {
        "zero": torch.zeros_like(f[:, -1, latent]),
        "clamp": torch.full_like(f[:, -1, latent], 3.0),
        "scale": 2 * f[:, -1, latent],
    }[action]
    expected = x.clone()
    expected[:, -1] += (new - f[:, -1, latent]).unsqueeze(-1) * saes[hook].W_dec[latent]
    assert torch.allclose(y, expected, atol=1e-5)
    assert torch.equal(y[:, :-1], x[:, :-1])  # other positions untouched


def test_attached_edit_stays_until_removed(setup):
    model, saes, task = setup
    plain = model(task.clean)
    edit = Edit([FeatureEdit("blocks.0.hook_mlp_out", 3), FeatureEdit("blocks.1.hook_attn_out", 5, "scale", 0.0)])
    with edited(model, saes, edit):
        scoped = model(task.clean)
    assert torch.equal(model(task.clean), plain)
    handle = attach(model, saes, edit)
    try:
        assert torch.equal(model(task.clean), scoped)
        assert torch.equal(model(task.clean), scoped)  # still attached
    finally:
        handle.remove()
    handle.remove()  # twice is harmless
    assert torch.equal(model(task.clean), plain)
    assert not any(model.hook_dict[h].fwd_hooks for h in HOOKS)
    with pytest.raises(RuntimeError, match="boom"), edited(model, saes, edit):
        raise RuntimeError("boom")
    assert not any(model.hook_dict[h].fwd_hooks for h in HOOKS)


def test_edit_json_round_trip(tmp_path):
    edit = Edit(
        [FeatureEdit("blocks.0.hook_mlp_out", 3, "mean", 0.25, [1, 2]), FeatureEdit("blocks.1.hook_attn_out", 5)],
        "two features",
    )
    path = edit.save(tmp_path / "edit.json")
    assert Edit.load(path) == edit
    assert json.loads(path.read_text())["features"][0]["positions"] == [1, 2]


def test_bad_edits_are_one_line(setup, tmp_path):
    _, saes, _ = setup
    with pytest.raises(CircuitsError, match=r"edit feature 0 \(blocks.7.hook_mlp_out/1\): the SAE set has no SAE"):
        Edit([FeatureEdit("blocks.7.hook_mlp_out", 1)]).check(saes)
    with pytest.raises(CircuitsError, match="latent out of range"):
        Edit([FeatureEdit("blocks.0.hook_mlp_out", 64)]).check(saes)
    with pytest.raises(CircuitsError, match="action 'clamp' needs a value"):
        Edit([FeatureEdit("blocks.0.hook_mlp_out", 1, "clamp")]).check(saes)
    with pytest.raises(CircuitsError, match="unknown action 'boost'"):
        Edit([FeatureEdit("blocks.0.hook_mlp_out", 1, "boost", 1.0)]).check(saes)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"features": [{"hook": "blocks.0.hook_mlp_out"}]}))
    with pytest.raises(CircuitsError, match=r"bad.json: features\[0\]: missing field 'latent'"):
        Edit.load(bad)
    bad.write_text("[1,")
    with pytest.raises(CircuitsError, match="bad.json: not JSON"):
        Edit.load(bad)


def test_edit_from_circuit_takes_the_features_the_behaviour_relies_on():
    edit = edit_from_circuit(toy_graph(), top=2)
    # effects: mlp/5 -2.0, resid/7 -1.0, attn/9 -0.1 (embed and error nodes are not features)
    assert [(f.hook, f.latent) for f in edit.features] == [
        ("blocks.0.hook_mlp_out", 5),
        ("blocks.1.hook_resid_post", 7),
    ]
    assert all(f.action == "zero" and f.positions is None for f in edit.features)


def test_negative_positions_count_from_the_end(setup):
    model, saes, task = setup
    a = Edit([FeatureEdit("blocks.0.hook_mlp_out", 3, "clamp", 2.0, positions=[-1, -3])])
    b = Edit([FeatureEdit("blocks.0.hook_mlp_out", 3, "clamp", 2.0, positions=[task.n_pos - 1, task.n_pos - 3])])
    with edited(model, saes, a):
        out_a = model(task.clean)
    with edited(model, saes, b):
        out_b = model(task.clean)
    assert torch.equal(out_a, out_b) and not torch.equal(out_a, model(task.clean))


@pytest.mark.parametrize("first_removed", ["a", "b"])
def test_attached_edits_are_independent(setup, first_removed):
    """attach A, attach B, remove one: the output is the other alone; remove both: the model."""
    model, saes, task = setup
    edits = {
        "a": Edit([FeatureEdit("blocks.0.hook_mlp_out", 3, "clamp", 2.0)]),
        "b": Edit(
            [
                FeatureEdit("blocks.0.hook_mlp_out", 7, "scale", 0.0),
                FeatureEdit("blocks.1.hook_resid_post", 5, "clamp", 1.5),
            ]
        ),
    }
    plain = model(task.clean)
    alone = {}
    for name, edit in edits.items():
        with edited(model, saes, edit):
            alone[name] = model(task.clean)
        assert not torch.equal(alone[name], plain)
    handles = {name: attach(model, saes, edit) for name, edit in edits.items()}
    try:
        assert not torch.equal(model(task.clean), alone["a"]) and not torch.equal(model(task.clean), alone["b"])
        kept = "b" if first_removed == "a" else "a"
        handles[first_removed].remove()
        assert torch.equal(model(task.clean), alone[kept])
        with edited(model, saes, edits[first_removed]):  # a scoped edit on top leaves the attached one alone
            pass
        assert torch.equal(model(task.clean), alone[kept])
        handles[kept].remove()
        assert torch.equal(model(task.clean), plain)
    finally:
        for handle in handles.values():
            handle.remove()
    assert not any(model.hook_dict[h].fwd_hooks for h in HOOKS)


def test_restrict_keeps_the_named_kinds(setup):
    _, saes, _ = setup
    assert list(saes.restrict(["mlp", "attn"])) == [h for h in HOOKS if "resid" not in h]
    with pytest.raises(CircuitsError, match=r"unknown kind\(s\) foo \(use resid_pre, z, attn, resid_mid, mlp, resid\)"):
        saes.restrict(["resid", "foo"])
    with pytest.raises(CircuitsError, match="the SAE set has no attn hooks"):
        saes.restrict(["mlp"]).restrict(["attn"])


def test_text_collateral_is_the_loss_and_kl_computed_directly(setup):
    from circuits.circuit.edit import labelled_documents, text_change

    model, saes = setup[:2]
    hook = next(iter(saes))
    edit = Edit([FeatureEdit(hook, i, "scale", 3.0) for i in range(4)])
    rows = text_change(model, saes, edit, n_docs=6, seq_len=20, key="test")
    tokens, families = labelled_documents(TOK, "test", 6, 20)
    assert families[0][0] == "" and all(len(f) == 20 for f in families) and tokens.shape == (6, 20)
    with torch.no_grad():
        p = model(tokens)[:, :-1].log_softmax(-1)
        with edited(model, saes, edit):
            q = model(tokens)[:, :-1].log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)  # [doc, pos]
    loss = -q.gather(-1, tokens[:, 1:, None])[..., 0]
    by_family = {r.family: r for r in rows}
    assert by_family["all"].n_tokens == 6 * 19 and by_family["all"].kl == pytest.approx(float(kl.mean()), rel=1e-5)
    assert by_family["all"].loss_after == pytest.approx(float(loss.mean()), rel=1e-5)
    family = next(f for f in by_family if f != "all")
    mask = torch.tensor([[f == family for f in row[1:]] for row in families])
    assert by_family[family].n_tokens == int(mask.sum()) and by_family[family].kl == pytest.approx(
        float(kl[mask].mean()), rel=1e-5
    )
    nothing = text_change(model, saes, Edit([FeatureEdit(hook, 0, "scale", 1.0)]), n_docs=6, seq_len=20, key="test")
    assert all(abs(r.kl) < 1e-6 and r.loss_before == pytest.approx(r.loss_after) for r in nothing)
    # at the end of the prompt: each prediction from its own prefix, edited at its last token
    last = Edit([FeatureEdit(hook, i, "scale", 3.0, [-1]) for i in range(4)])
    rows = {r.family: r for r in text_change(model, saes, last, n_docs=6, seq_len=20, key="test")}
    with torch.no_grad(), edited(model, saes, last):
        q = torch.stack([model(tokens[:, :t])[:, -1] for t in range(1, 20)], 1).log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    assert rows["all"].kl == pytest.approx(float(kl.mean()), rel=1e-5) and rows["all"].kl > 0


def test_tpp_and_the_random_edit_of_the_same_size(setup):
    from circuits.circuit.edit import TaskChange, collateral, random_edit
    from circuits.circuit.evaluate import TaskScore

    def change(x):
        score = TaskScore(1.0, 2.0, 0.0)
        return TaskChange(score, score, x)

    c = collateral({"ioi": change(-0.9), "sva": change(0.1), "greater_than": change(-0.05)}, "ioi", [])
    assert (c.intended, c.unintended) == pytest.approx((0.9, 0.075)) and c.tpp == pytest.approx(0.825)
    saes = setup[1]
    hook = next(iter(saes))
    edit = Edit([FeatureEdit(hook, i, "clamp", 2.0, [-1]) for i in range(5)])
    other = random_edit(edit, saes, __import__("random").Random(0))
    assert len(other.features) == 5 and all(
        f.hook == hook and f.action == "clamp" and f.positions == [-1] for f in other.features
    )
    assert not {f.latent for f in other.features} & set(range(5)) and len({f.latent for f in other.features}) == 5
