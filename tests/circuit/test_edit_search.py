"""The edit search: greedy selection against a planted objective, and its objective against a
direct computation on a tiny model."""

import pytest
import torch

from circuits.circuit.edit import Edit, FeatureEdit, edited, labelled_documents
from circuits.circuit.edit_search import (
    RETAIN_KEY,
    EditScore,
    EditUnit,
    GateSchedule,
    Objective,
    gradient_search,
    greedy_search,
)
from circuits.core.errors import CircuitsError
from circuits.core.vocab import hook_names
from tasks.builtin import make_task
from tests.helpers import TOK, random_saes, tiny_hooked_model


def _planted(edit: Edit, names: list[str]) -> EditScore:
    """A: removes most of the target but moves another task (a feature shared with it); B and
    C: half of the target each, nothing else."""
    chosen = {n for n in names}
    target = -(0.9 * ("A" in chosen) + 0.5 * ("B" in chosen) + 0.5 * ("C" in chosen))
    unintended = 0.5 if "A" in chosen else 0.0
    value = max(1 + target, 0.0) + 2 * unintended
    return EditScore(names, target, max(1 + target, 0.0), unintended, unintended, 0.0, value)


def test_the_search_finds_the_edit_a_top_k_choice_misses():
    units = [EditUnit(n, [FeatureEdit("blocks.0.hook_mlp_out", i)]) for i, n in enumerate("ABC")]
    top_k = ["A"]  # by the target alone, A is the strongest single unit
    edit, history = greedy_search(units, _planted, budget=2, progress=False)
    assert [fe.latent for fe in edit.features] == [1, 2] and history[-1].units == ["B", "C"]
    assert history[-1].objective == 0.0 < _planted(Edit([]), top_k).objective
    assert [h.objective for h in history] == sorted((h.objective for h in history), reverse=True)
    one, _ = greedy_search(units, _planted, budget=1, progress=False)
    assert len(one.features) == 1
    with pytest.raises(CircuitsError, match="budget must be at least 1 unit, got 0"):
        greedy_search(units, _planted, budget=0, progress=False)


def test_the_objective_is_what_the_edit_does_computed_directly():
    model = tiny_hooked_model()
    hooks = hook_names(["resid", "mlp"], range(2))
    saes = random_saes(hooks)
    target, other = make_task("ioi", TOK, n=8), make_task("sva", TOK, n=8)
    objective = Objective(model, saes, target, {"sva": other}, n_docs=3, seq_len=12)
    edit = Edit([FeatureEdit(hooks[1], i, "scale", 4.0, [-1]) for i in range(8)])
    got = objective.score(edit, ["x"])
    with torch.no_grad():
        clean = [t.metric_per_example(model(t.clean)).mean() for t in (target, other)]
        span = [
            abs(c - t.metric_per_example(model(t.corrupt)).mean()) for c, t in zip(clean, (target, other), strict=True)
        ]
        with edited(model, saes, edit):
            after = [t.metric_per_example(model(t.clean)).mean() for t in (target, other)]
        tokens, _ = labelled_documents(TOK, RETAIN_KEY, 3, 12)
        p = model(tokens)[:, :-1].log_softmax(-1)
        with edited(model, saes, edit):
            q = torch.stack([model(tokens[:, :t])[:, -1] for t in range(1, 12)], 1).log_softmax(-1)
    change = [float((a - c) / s) for a, c, s in zip(after, clean, span, strict=True)]
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert got.target_change == pytest.approx(change[0], rel=1e-4) and got.unintended == pytest.approx(
        abs(change[1]), rel=1e-4
    )
    assert got.kl == pytest.approx(kl, rel=1e-4) and got.kl > 0
    with torch.no_grad():
        per_prompt = [t.metric_per_example(model(t.clean)).relu().mean() for t in (target,)]
        with edited(model, saes, edit):
            per_prompt.append(target.metric_per_example(model(target.clean)).relu().mean())
    left = float(per_prompt[1] / per_prompt[0]) if per_prompt[0] > 0 else max(1 + change[0], 0.0)
    assert got.worst == pytest.approx(abs(change[1]), rel=1e-4) and got.left == pytest.approx(left, rel=1e-4)
    assert got.objective == pytest.approx(left + 4 * abs(change[1]) + kl, rel=1e-4)


def test_a_steering_edit_clamps_the_variables_families_to_their_mean_there():
    from circuits.circuit.edit_search import steer_edit, steering_success
    from circuits.circuit.families import family_nodes, latent_values
    from circuits.circuit.record import record_of
    from tests.helpers import families_graph

    graph = families_graph()
    model = tiny_hooked_model()
    saes = random_saes(["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"])
    task = make_task("ioi", TOK, n=64)
    value = task.vars["IO"][0]
    edit = steer_edit(graph, model, saes, task, "IO", value)
    h = record_of(graph).hierarchy
    nodes = family_nodes(h)
    rows = [i for i, v in enumerate(task.vars["IO"]) if v == value]
    latents = latent_values(model, saes, task.clean, ["blocks.0.hook_mlp_out"])["blocks.0.hook_mlp_out"][rows].mean(0)
    assert [(fe.hook, fe.latent, fe.action, fe.positions) for fe in edit.features] == [
        (nodes[m].hook, nodes[m].latent, "clamp", [-1]) for m in h.family("F1").members
    ]
    for fe, m in zip(edit.features, h.family("F1").members, strict=True):
        assert fe.value == pytest.approx(float(latents[nodes[m].position, fe.latent]))
    result = steering_success(model, saes, edit, make_task("ioi", TOK, n=16, seed=1), "IO", value)
    assert 0 <= result.base <= 1 and 0 <= result.success <= 1 and result.n_prompts <= 16
    with pytest.raises(CircuitsError, match=r"no family tracks 'order' \(the circuit's families track: IO, S\)"):
        steer_edit(graph, model, saes, task, "order", "ABBA")
    with pytest.raises(CircuitsError, match="no prompt of ioi has IO = 'Nobody'"):
        steer_edit(graph, model, saes, task, "IO", "Nobody")
    with pytest.raises(CircuitsError, match="steer target 'Mary Ann' is 2 tokens, not one"):
        steering_success(model, saes, edit, task, "IO", "Mary Ann")


def test_family_units_edit_each_latent_where_the_circuit_uses_it():
    from circuits.circuit.edit_search import family_units
    from circuits.circuit.record import record_of
    from tests.helpers import families_graph

    graph = families_graph()
    means = {h: torch.arange(64, dtype=torch.float) / 10 for h in ("blocks.0.hook_mlp_out", "blocks.0.hook_attn_out")}
    units = family_units(graph, "mean", means)
    h = record_of(graph).hierarchy
    assert [u.name for u in units] == [f"{f.id} {f.name}" for f in h.families]
    first = units[0].features
    assert [(fe.latent, fe.positions, fe.value) for fe in first] == [
        (10 + i, [-1], pytest.approx((10 + i) / 10)) for i in range(4)
    ]
    assert all(fe.action == "zero" and fe.value is None for fe in family_units(graph)[0].features)
    with pytest.raises(CircuitsError, match="a mean edit needs the features' mean activations"):
        family_units(graph, "mean")


def _planted_model():
    """A tiny model (no final norm, so the last residual stream reaches the logits linearly)
    with an SAE at ``blocks.1.hook_resid_post`` whose latents 0, 1, 2 fire at 1.0 everywhere
    (the rest never): switching latent 0 (A) off removes 0.9 of the target task's preference
    and moves the other task's metric by 0.5 (a feature the two share); latents 1 and 2 (B, C)
    remove half of the target's preference each and leave the other task alone. Both tasks'
    corrupt prompts are their clean ones, so the other task's change is in metric units (the
    span falls back to 1)."""
    from tasks.task import Task

    model = tiny_hooked_model(normalization=None)
    hook = "blocks.1.hook_resid_post"
    saes = random_saes([hook])
    sae = saes[hook]
    torch.manual_seed(1)
    vocab = TOK.get_vocab()

    def task(name, answer, wrong):
        clean = torch.randint(0, len(TOK), (1, 6)).repeat(8, 1)  # one prompt: every metric is the mean
        n = clean.shape[0]
        t = Task(name, clean, clean, torch.full((n, 1), vocab[answer]), torch.full((n, 1), vocab[wrong]))
        with torch.no_grad():
            m = float(t.metric_per_example(model(clean)).mean())
        return (t, m) if m > 0 else task(name, wrong, answer)  # the target must prefer its answer

    (target, m0), (other, _) = task("target", "Alice", "Adam"), task("other", "walks", "walked")
    direction = torch.stack(
        [model.W_U[:, int(t.answer[0, 0])] - model.W_U[:, int(t.wrong[0, 0])] for t in (target, other)], 1
    )
    wanted = torch.tensor([[0.9 * m0, 0.5], [0.5 * m0, 0.0], [0.5 * m0, 0.0]])  # (target, other) drop per latent
    rows = (direction @ torch.linalg.solve(direction.T @ direction, wanted.T)).T  # d . v = wanted
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)
        sae.b_enc[:3] = 1.0
        sae.W_dec.normal_(0, 0.01)
        sae.W_dec[:3] = rows
    return model, saes, hook, target, other


def test_the_gradient_search_finds_the_planted_edit_a_top_k_choice_misses():
    model, saes, hook, target, other = _planted_model()
    objective = Objective(model, saes, target, {"other": other}, n_docs=2, seq_len=8, text_weight=0.0)
    single = {i: objective.score(Edit([FeatureEdit(hook, i)]), []) for i in range(3)}
    assert single[0].left == pytest.approx(0.1, abs=1e-3)  # the top-1 by effect: A
    assert single[0].worst == pytest.approx(0.5, abs=1e-3) and single[1].worst == pytest.approx(0.0, abs=1e-3)
    candidates = [FeatureEdit(hook, i) for i in range(6)]  # A, B, C and three latents that never fire
    edit, history = gradient_search(objective, candidates, budget=2, schedule=GateSchedule(steps=60), progress=False)
    assert sorted(fe.latent for fe in edit.features) == [1, 2]
    assert history[-1].left == pytest.approx(0.0, abs=1e-3) and history[-1].worst < 1e-3
    top_k = objective.score(Edit([FeatureEdit(hook, 0), FeatureEdit(hook, 1)]), [])
    assert history[-1].objective < 0.01 < top_k.objective
    assert all(fe.positions is None and fe.action == "zero" for fe in edit.features)
    with pytest.raises(CircuitsError, match="budget must be at least 1 latent, got 0"):
        gradient_search(objective, candidates, budget=0, progress=False)


def test_the_gates_edit_as_the_splice_does():
    """A gate at 1 is the all-or-nothing edit: the gated hook's logits equal `edited`'s."""
    from circuits.circuit.edit_search import _gate_hooks

    model, saes, hook, target, _ = _planted_model()
    features = [FeatureEdit(hook, 0, "mean", 0.3), FeatureEdit(hook, 5, "zero")]
    logits = torch.tensor([50.0, 50.0])
    with torch.no_grad(), model.hooks(fwd_hooks=_gate_hooks(saes, features, logits, [1.0])):
        gated = model(target.clean)
    with torch.no_grad(), edited(model, saes, Edit(features)):
        want = model(target.clean)
    torch.testing.assert_close(gated, want, atol=1e-5, rtol=1e-5)


def test_gate_schedule_and_candidates_refuse_bad_input():
    from circuits.circuit.edit_search import latent_candidates
    from tests.helpers import families_graph

    with pytest.raises(CircuitsError, match="gate schedule: steps >= 1"):
        GateSchedule(steps=0)
    schedule = GateSchedule(steps=10, final_temperature=0.1)
    assert schedule.temperature(0) == schedule.temperature(4) == 1.0 and schedule.temperature(9) == pytest.approx(0.1)
    graph = families_graph()
    zero = latent_candidates(graph, "zero")
    assert zero and all(fe.positions is None and fe.action == "zero" for fe in zero)
    assert len({(fe.hook, fe.latent) for fe in zero}) == len(zero)
    with pytest.raises(CircuitsError, match="a mean edit needs the features' mean activations"):
        latent_candidates(graph, "mean")
    with pytest.raises(CircuitsError, match="not 'clamp'"):
        latent_candidates(graph, "clamp")
