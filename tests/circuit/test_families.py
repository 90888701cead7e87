"""Feature families: what a latent tracks, the grouping, and each validation against a direct
intervention on a real (tiny) model."""

import random

import pytest
import torch

from circuits.attribution.nodes import node_effects
from circuits.attribution.splice import encode
from circuits.circuit.ablation import Ablator
from circuits.circuit.config import AblationSpec, HierarchyConfig
from circuits.circuit.families import (
    CARRIES,
    MINOR,
    TRACKS,
    Tracking,
    by_value,
    changed_variables,
    detect,
    donor_tokens,
    donors,
    epsilon_squared,
    find_families,
    group,
    interchange_rate,
    latent_values,
    prompt_families,
    rank,
    site_activations,
    steering,
    task_variables,
    token_valued,
    track,
)
from circuits.circuit.record import FamilyRecord, HierarchyRecord
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node, Site
from tasks.builtin import make_task
from tests.helpers import PLANTED_HOOK, TOK, planted, random_saes, tiny_hooked_model


def test_epsilon_squared_separates_a_variable_from_chance():
    g = torch.Generator().manual_seed(0)
    values = [f"v{i % 40}" for i in range(80)]  # 40 values, two prompts each
    by_value = torch.tensor([float(i % 40) for i in range(80)])[:, None]
    noise = torch.randn(80, 1, generator=g)
    eps = epsilon_squared(torch.cat([by_value, noise, torch.zeros(80, 1)], 1), values)
    assert eps[0] == pytest.approx(1.0, abs=1e-6)
    # raw eta squared of noise over 40 groups of 2 is ~0.5; the correction brings it to ~0
    assert abs(float(eps[1])) < 0.25
    assert eps[2] == 0.0


def test_a_latent_tracks_the_variable_that_drives_it():
    io = [["Mary", "John", "Alice", "Bob"][i % 4] for i in range(64)]
    s = [["Carol", "David"][i % 2] for i in range(64)]
    acts = torch.zeros(64, 3)
    acts[:, 0] = torch.tensor([2.0 if v == "Mary" else 0.0 for v in io])  # fires on IO = Mary
    acts[:3, 2] = 1.0  # fires on 3 prompts: too rare to track anything
    acts[:, 1] = torch.randn(64).abs()
    nodes = [Node.at(PLANTED_HOOK, 0, i) for i in range(3)]
    t = track(acts, nodes, {"IO": io, "S": s})
    assert t.variable[nodes[0]] == "IO" and t.score[nodes[0]] == pytest.approx(1.0)
    assert t.variable[nodes[1]] is None and t.variable[nodes[2]] is None
    assert "IO" in t.carries[nodes[0]]  # (and S: in these prompts IO = Mary only with S = Carol)


def test_a_latent_can_carry_a_variable_it_does_not_track():
    """Half of its activation from S, half noise: too little to track S (the family's bar),
    enough that an interchange control must not draw it."""
    torch.manual_seed(0)
    s = [["Carol", "David"][i % 2] for i in range(256)]
    acts = (torch.tensor([1.0 if v == "Carol" else 0.0 for v in s]) + torch.randn(256).abs() * 1.2).unsqueeze(1)
    node = Node.at(PLANTED_HOOK, 0, 0)
    t = track(acts, [node], {"S": s})
    assert CARRIES <= t.score[node] < TRACKS
    assert t.variable[node] is None and t.carries[node] == {"S"}


def test_a_latent_detects_the_value_where_it_fires():
    io = [["Mary", "John", "Alice", "Bob"][i % 4] for i in range(64)]
    number = [["singular", "plural"][i % 2] for i in range(64)]
    acts = torch.zeros(64, 5)
    acts[:, 0] = torch.tensor([1.5 if v == "Mary" else 0.0 for v in io])  # exactly IO = Mary
    acts[:, 1] = torch.tensor([1.0 if v == "plural" else 0.0 for v in number])  # exactly plural
    acts[:24, 1] += 0.5  # and on 12 singular prompts: F1 = 2 * 32 / (32 + 44)
    acts[:, 2] = torch.tensor([1.0 if v in ("Mary", "John") else 0.0 for v in io])  # two names: a code
    acts[:, 3] = 1.0  # always: no varying value explains it
    nodes = [Node.at(PLANTED_HOOK, 0, i) for i in range(5)]
    d = detect(acts, nodes, {"IO": io, "number": number, "template": ["one"] * 64})
    assert (d.value[nodes[0]], d.f1[nodes[0]]) == ("IO=Mary", pytest.approx(1.0))
    assert (d.value[nodes[1]], d.f1[nodes[1]]) == ("number=plural", pytest.approx(64 / 76))
    assert d.f1[nodes[2]] == pytest.approx(2 * 16 / (16 + 32))  # IO=Mary (or John) at best
    assert d.f1[nodes[3]] == pytest.approx(2 / 3) and not d.value[nodes[3]].startswith("template")
    assert (d.value[nodes[4]], d.f1[nodes[4]]) == ("", 0.0)  # never fires
    assert d.detectors() == {nodes[0], nodes[1]}


def test_families_group_by_site_variable_and_sign_and_merge_minor_ones():
    a, b = Site.at("blocks.0.hook_resid_post", 3, None), Site.at("blocks.1.hook_mlp_out", 3, None)
    nodes = [Node(a, i) for i in range(5)] + [Node(b, i) for i in range(3)]
    effects = dict(zip(nodes, [-1.0, -0.5, 0.4, -0.3, -0.001, -2.0, -1.0, -0.002], strict=True))
    variable = dict(zip(nodes, ["IO", "IO", "IO", None, "S", "S", "S", None], strict=True))
    fams = group(effects, Tracking(variable, dict.fromkeys(nodes, 0.9)), {"IO", "S"})
    by_name = {f.name: f for f in fams}
    assert [f.id for f in fams] == [f"F{i}" for i in range(1, len(fams) + 1)]
    assert [abs(f.effect) for f in fams] == sorted((abs(f.effect) for f in fams), reverse=True)
    assert by_name["S identity at L1 mlp@p3, supports"].members == [nodes[5].id, nodes[6].id]
    assert by_name["IO identity at L0 resid@p3, supports"].effect == pytest.approx(-1.5)
    assert by_name["IO identity at L0 resid@p3, opposes"].members == [nodes[2].id]
    assert by_name["untracked at L0 resid@p3, supports"].variable is None
    # under MINOR of the |effect|: one minor family per site, whatever they track
    total = sum(abs(e) for e in effects.values())
    assert 0.001 < MINOR * total and 0.002 < MINOR * total
    assert by_name["minor latents at L0 resid@p3"].members == [nodes[4].id]
    assert by_name["minor latents at L1 mlp@p3"].members == [nodes[7].id]
    assert sorted(m for f in fams for m in f.members) == sorted(n.id for n in nodes)  # a partition
    h = HierarchyRecord.from_dict(_hierarchy_data(fams))
    assert HierarchyRecord.from_dict(h.to_dict()).families == fams
    assert h.named_share() == pytest.approx(sum(abs(f.effect) for f in fams if f.named) / total)
    assert h.family("F1") == fams[0]
    with pytest.raises(CircuitsError, match="no family 'F99'"):
        h.family("F99")


def _hierarchy_data(families: list[FamilyRecord]) -> dict:
    level = {"ranking": "optimised", "n_nodes": 1, "n_error_nodes": 0, "faithfulness": 1.0, "completeness": 0.0}
    level |= {"random_faithfulness": 0.0, "reached_target": True}
    return {
        "ablation": "mean",
        "start_layer": 0,
        "target": 0.9,
        "m_model": 1.0,
        "m_empty": 0.0,
        "n_held_out": 8,
        "sites": [],
        "site_level": level,
        "features": [],
        "feature_level": level,
        "attribution": level,
        "families": [f.to_dict() for f in families],
    }


def test_built_in_tasks_carry_the_variables_they_were_made_from():
    ioi = make_task("ioi", TOK, n=16)
    answers = [TOK.decode([int(t)]).strip() for t in ioi.answer[:, 0]]
    wrongs = [TOK.decode([int(t)]).strip() for t in ioi.wrong[:, 0]]
    assert ioi.vars["IO"] == answers and ioi.vars["S"] == wrongs
    sub = ioi.subset(torch.tensor([3, 5]))
    assert sub.vars["IO"] == [answers[3], answers[5]]
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[2, 7]] = True  # a boolean mask picks rows 2 and 7, in the lists as in the tensors
    sub = ioi.subset(mask)
    assert sub.vars["S"] == [wrongs[2], wrongs[7]] and sub.prompts == [ioi.prompts[2], ioi.prompts[7]]
    sva = make_task("sva", TOK, n=16)
    verbs = [TOK.decode([int(t)]).strip() for t in sva.answer[:, 0]]
    assert [v.endswith("s") for v in verbs] == [n == "singular" for n in sva.vars["number"]]
    gt = make_task("greater_than", TOK, n=8)
    assert [TOK.decode([int(t)]).strip() for t in gt.clean[:, 8]] == gt.vars["YY"]
    variables = task_variables(ioi, TOK)
    assert "token@S2" in variables and "token@END" not in variables  # END is always "to"
    assert {"IO", "S", "token@A", "place"} <= set(token_valued(ioi, TOK, variables))
    assert "order" not in token_valued(ioi, TOK, variables)


def test_donors_replace_a_name_or_swap_it_with_the_other_one():
    ioi = make_task("ioi", TOK, n=8)
    tokens = token_valued(ioi, TOK, task_variables(ioi, TOK))
    swapped = donor_tokens(ioi, "IO", tokens, swap=True)
    replaced = donor_tokens(ioi, "IO", tokens, swap=False)
    for i in range(ioi.n_examples):
        io, s, row = tokens["IO"][i], tokens["S"][i], ioi.clean[i].tolist()
        assert swapped[i].tolist() == [s if t == io else io if t == s else t for t in row]
        new = [t for t, u in zip(replaced[i].tolist(), row, strict=True) if t != u]
        assert len(new) == row.count(io) and new[0] not in row and new[0] in tokens["IO"]  # another prompt's IO
    changed = changed_variables(ioi.clean, swapped, tokens)
    assert {"IO", "S", "token@A", "token@B", "token@S2"} <= changed and "place" not in changed
    assert "S" not in changed_variables(ioi.clean, replaced, tokens)


def _patched_top(model, saes, task, members, donor_tokens):
    """The top last-position token with ``members`` set to their donor-run values, by a plain
    TransformerLens hook (x + D(f') - D(f)): the intervention written out by hand."""
    hook = PLANTED_HOOK
    sae = saes[hook]
    _, cache = model.run_with_cache(donor_tokens, names_filter=[hook])
    donor = encode(sae, cache[hook]).latents

    def patch(x, hook):  # noqa: ARG001
        f = encode(sae, x).latents
        new = f.clone()
        for m in members:
            new[:, m.position, m.latent] = donor[:, m.position, m.latent]
        return x + sae.decode(new) - sae.decode(f)

    with torch.no_grad():
        return model.run_with_hooks(task.clean, fwd_hooks=[(hook, patch)])[:, -1].argmax(-1)


def test_interchange_rate_matches_the_intervention_written_out():
    torch.manual_seed(1)
    model = tiny_hooked_model(normalization=None, n_layers=1)
    saes = random_saes([PLANTED_HOOK], d_sae=32, k=8)
    task = make_task("ioi", TOK, n=16)
    tokens = token_valued(task, TOK, task_variables(task, TOK))
    d = donors(model, saes, task, "IO", tokens, [PLANTED_HOOK], batch_size=64)
    with torch.no_grad():
        clean_top, donor_top = model(task.clean)[:, -1].argmax(-1), model(d.tokens)[:, -1].argmax(-1)
    assert d.answer.tolist() == donor_top.tolist() and d.moves.tolist() == (donor_top != clean_top).tolist()
    assert d.moves.any() and "IO" in d.changed
    labels = list(task.position_labels)
    members = [Node.at(PLANTED_HOOK, task.n_pos - 1, i, labels) for i in random.Random(0).sample(range(32), 12)]
    rate, n = interchange_rate(model, saes, task, members, d, batch_size=5)
    hit = _patched_top(model, saes, task, members, d.tokens) == donor_top
    assert n == int(d.moves.sum()) and rate == pytest.approx(float(hit[d.moves].float().mean()))
    everything = [Node.at(PLANTED_HOOK, p, i, labels) for p in range(task.n_pos) for i in range(32)]
    hit = _patched_top(model, saes, task, everything, d.tokens) == donor_top
    assert interchange_rate(model, saes, task, everything, d)[0] == pytest.approx(float(hit[d.moves].float().mean()))


def test_families_on_a_planted_circuit_are_validated_by_real_interventions():
    model, saes, task = planted()
    effects = node_effects(model, saes, task, "atp", progress=False)
    end = task.n_pos - 1
    latents = {
        Node.at(PLANTED_HOOK, end, i, list(task.position_labels)): float(effects.values[PLANTED_HOOK].latents[end, i])
        for i in range(16)
    }
    latents = {n: e for n, e in latents.items() if e != 0}
    error = Node.at(PLANTED_HOOK, end, None, list(task.position_labels))
    sites = [error.site]
    cfg = HierarchyConfig(target=0.9, ablation=AblationSpec("zero"), n_random=1)
    found = find_families(model, saes, task, task, latents, [error], sites, cfg)
    fams = found.families
    assert sorted(m for f in fams for m in f.members) == sorted(n.id for n in latents)
    # the level's F is the union's F, measured again
    ab = Ablator(model, saes, task, AblationSpec("zero"))
    nodes = {n.id: n for n in latents}
    kept = [nodes[m] for f in fams[: found.level.cut.n_latents] for m in f.members] + [error]
    assert found.level.cut.faithfulness == pytest.approx(ab.faithfulness(kept), abs=1e-5)
    assert found.level.reached_target
    # each latent's value detection: F1 of its activity at its site on the held-out prompts, by hand
    acts = site_activations(model, saes, task, list(latents)) != 0
    for values in task_variables(task, TOK).values():
        for value in set(values) if len(set(values)) > 1 else []:
            holds = torch.tensor([v == value for v in values])
            for i, n in enumerate(latents):
                f1 = 2 * float((acts[:, i] & holds).sum()) / max(1, int(acts[:, i].sum() + holds.sum()))
                assert found.detection.f1[n] >= f1 - 1e-6
    assert set(found.detection.f1) == set(latents)
    # (a): the family patched to its corrupt values, by hand
    top = fams[0]
    corrupt = latent_values(model, saes, task.corrupt, [PLANTED_HOOK])[PLANTED_HOOK]

    def to_corrupt(x, hook):  # noqa: ARG001
        f = encode(saes[PLANTED_HOOK], x).latents
        new = f.clone()
        for m in top.members:
            n = nodes[m]
            new[:, n.position, n.latent] = corrupt[:, n.position, n.latent]
        return x + saes[PLANTED_HOOK].decode(new) - saes[PLANTED_HOOK].decode(f)

    with torch.no_grad():
        base = task.metric_per_example(model(task.clean)).mean()
        moved = task.metric_per_example(model.run_with_hooks(task.clean, fwd_hooks=[(PLANTED_HOOK, to_corrupt)])).mean()
    assert top.ablation_ratio * top.effect == pytest.approx(float(moved - base), rel=1e-4, abs=1e-5)
    # one prompt: its active families, each latent's effect that prompt's own attribution
    one = node_effects(model, saes, task.subset(slice(0, 1)), "atp", progress=False).values[PLANTED_HOOK]
    active = prompt_families(model, saes, task, 0, fams, nodes)
    assert active and [abs(a.effect) for a in active] == sorted((abs(a.effect) for a in active), reverse=True)
    for a in active:
        for m, act, effect in a.latents:
            assert act != 0 and effect == pytest.approx(float(one.latents[end, nodes[m].latent]), rel=1e-4, abs=1e-6)
    with pytest.raises(CircuitsError, match="prompt 99: the task has prompts 0 to"):
        prompt_families(model, saes, task, 99, fams, nodes)


def test_families_need_a_feature_level():
    model, saes, task = planted()
    with pytest.raises(CircuitsError, match="families need a feature level"):
        find_families(model, saes, task, task, {}, [], [], HierarchyConfig())


def test_a_variable_that_is_not_a_token_takes_another_prompts_value():
    torch.manual_seed(2)
    model = tiny_hooked_model(normalization=None, n_layers=1)
    saes = random_saes([PLANTED_HOOK], d_sae=32, k=8)
    task = make_task("sva", TOK, n=12)
    d = by_value(model, saes, task, "number", [PLANTED_HOOK], batch_size=5)
    numbers = task.vars["number"]
    for i in range(task.n_examples):  # the next prompt with the other number
        j = next(k % 12 for k in range(i + 1, i + 12) if numbers[k % 12] != numbers[i])
        assert d.tokens[i].tolist() == task.clean[j].tolist()
    with torch.no_grad():
        right = task.metric_per_example(model(task.clean)) > 0
    assert d.answer is None and d.moves.tolist() == right.tolist() and d.changed == {"number"}
    labels = list(task.position_labels)
    members = [Node.at(PLANTED_HOOK, p, i, labels) for p in range(task.n_pos) for i in range(32)]
    rate, n = interchange_rate(model, saes, task, members, d)
    _, cache = model.run_with_cache(d.tokens, names_filter=[PLANTED_HOOK])
    sae = saes[PLANTED_HOOK]
    donor_latents = encode(sae, cache[PLANTED_HOOK]).latents

    def patch(x, hook):  # noqa: ARG001  every latent from the donor, the error term kept
        return x + sae.decode(donor_latents) - sae.decode(encode(sae, x).latents)

    with torch.no_grad():
        flipped = task.metric_per_example(model.run_with_hooks(task.clean, fwd_hooks=[(PLANTED_HOOK, patch)])) < 0
    assert n == int(right.sum()) > 0 and rate == pytest.approx(float(flipped[right].float().mean()))


def test_families_rank_by_the_change_patching_them_makes():
    def fam(effect, ratio):
        return FamilyRecord("", "f", "s", None, ["m"], effect, 0.5, ablation_ratio=ratio)

    loud_but_idle, quiet_but_real, unmeasured = fam(-7.0, 0.02), fam(-2.0, 1.0), fam(-1.0, None)
    ranked = rank([loud_but_idle, unmeasured, quiet_but_real])
    assert ranked == [quiet_but_real, unmeasured, loud_but_idle] and [f.id for f in ranked] == ["F1", "F2", "F3"]


def test_a_family_takes_its_sites_other_latents_that_track_its_variable():
    site = Site.at("blocks.0.hook_resid_post", 3, None)
    core, extra_io, extra_none = Node(site, 0), Node(site, 1), Node(site, 2)
    effects = {core: -1.0, extra_io: -0.5, extra_none: -0.4}
    tracking = Tracking({core: "IO", extra_io: "IO", extra_none: None}, dict.fromkeys(effects, 0.8))
    fams = group(effects, tracking, {"IO"}, core={core})
    assert [(f.name, f.members) for f in fams] == [("IO identity at L0 resid@p3, supports", [core.id, extra_io.id])]


def test_steering_clamps_to_the_mean_values_of_another_name():
    torch.manual_seed(3)
    model = tiny_hooked_model(normalization=None, n_layers=1)
    saes = random_saes([PLANTED_HOOK], d_sae=32, k=8)
    discovery, held_out = make_task("ioi", TOK, n=48), make_task("ioi", TOK, n=8, seed=1)
    tokens = token_valued(held_out, TOK, task_variables(held_out, TOK))
    steer = steering(model, saes, discovery, held_out, "IO", tokens, [PLANTED_HOOK], batch_size=16)
    found = token_valued(discovery, TOK, task_variables(discovery, TOK))["IO"]
    latents = latent_values(model, saes, discovery.clean, [PLANTED_HOOK])[PLANTED_HOOK]
    assert steer.moves.any()
    for i in steer.moves.nonzero().flatten().tolist():
        t = int(steer.answer[i])
        assert t not in held_out.clean[i].tolist() and t in tokens["IO"]  # another prompt's IO, absent here
        rows = [j for j, v in enumerate(found) if v == t]
        assert torch.allclose(steer.values[PLANTED_HOOK][i], latents[rows].mean(0))


@pytest.mark.parametrize("extra_hurts", [False, True])
def test_families_fall_back_to_the_feature_level_when_the_sites_latents_miss(monkeypatch, extra_hurts):
    """Latents outside the feature level join families that track their variable; where the
    families so made miss the target and the feature level's latents alone do better (a code
    kept in part), the families hold those alone and say so."""
    import circuits.circuit.families as fam

    model, saes, task = planted()
    effects = node_effects(model, saes, task, "atp", progress=False)
    end = task.n_pos - 1
    labels = list(task.position_labels)
    latents = {
        Node.at(PLANTED_HOOK, end, i, labels): float(effects.values[PLANTED_HOOK].latents[end, i]) for i in range(16)
    }
    latents = {n: e for n, e in latents.items() if e != 0}
    core = {Node.at(PLANTED_HOOK, end, 7, labels)}
    error = Node.at(PLANTED_HOOK, end, None, labels)
    # every latent tracks S, so the non-core ones join the core latent's family
    monkeypatch.setattr(
        fam, "track", lambda acts, nodes, variables: Tracking(dict.fromkeys(nodes, "S"), dict.fromkeys(nodes, 0.9), {})
    )
    real = fam.family_level

    def level(ab, families, nodes, *args):
        out = real(ab, families, nodes, *args)
        wide = any(nodes[m] not in core for f in families for m in f.members)
        if extra_hurts and wide:  # as if the extra latents pulled F down
            out.cut.faithfulness, out.cut.reached_target = out.cut.faithfulness - 0.5, False
        return out

    monkeypatch.setattr(fam, "family_level", level)
    cfg = HierarchyConfig(target=0.9, ablation=AblationSpec("zero"), n_random=1)
    found = find_families(model, saes, task, task, latents, [error], [error.site], cfg, core)
    members = {m for f in found.families for m in f.members}
    assert found.scope == ("features" if extra_hurts else "sites")
    assert (members == {n.id for n in core}) == extra_hurts and found.level.reached_target
