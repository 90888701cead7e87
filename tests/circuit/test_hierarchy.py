"""Hierarchical circuits on tiny models: sites, then features found by the mask optimiser,
each level validated by ablation; planted circuits whose answer is known."""

import pytest
import torch

from circuits.attribution.nodes import node_effects
from circuits.circuit.ablation import Ablator, site_masks
from circuits.circuit.config import AblationSpec, DiscoverConfig, HierarchyConfig, MaskConfig
from circuits.circuit.faithfulness import Level, Measurement
from circuits.circuit.hierarchy import (
    _best_skeleton,
    find_hierarchy,
    ranked_sites,
    site_from_record,
    site_record,
    site_scores,
    validate_hierarchy,
)
from circuits.circuit.optimise import initial_logits, optimise_mask
from circuits.circuit.record import HierarchyRecord
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node, Site, hook_names
from tasks.builtin import make_task
from tests.helpers import (
    CARRIERS,
    DECOY,
    PLANTED_HOOK,
    TOK,
    in_float64,
    planted,
    planted_two_paths,
    random_saes,
    tiny_hooked_model,
)

QUIET = {"progress": False}


def test_site_masks_cover_every_node_of_a_site():
    saes = random_saes(hook_names(["resid", "mlp"], range(2)))
    masks = site_masks([Site.at("blocks.1.hook_mlp_out", 2), Site.at("blocks.0.hook_resid_post", None)], saes, 5)
    assert masks["blocks.1.hook_mlp_out"].count() == (64, 1)  # one position: 64 latents, 1 error
    assert masks["blocks.0.hook_resid_post"].count() == (5 * 64, 5)  # every position
    assert masks["blocks.0.hook_mlp_out"].count() == (0, 0)
    site = Site.at("blocks.1.hook_mlp_out", 2, ["a", "b", "END"])
    assert site_from_record(site_record(site)) == site and site_from_record(site_record(site)).label == "END"


def test_sites_rank_by_summed_effect():
    model, saes, task = planted()
    effects = node_effects(model, saes, task, "atp", **QUIET)
    labels = list(task.position_labels)
    scores = site_scores(effects, saes, labels)
    assert all(v.shape == (17,) for v in scores.values())  # 16 latents + the error
    top = ranked_sites(scores)[0]
    assert top == Site.at(PLANTED_HOOK, task.n_pos - 1)
    v = effects.values[PLANTED_HOOK]
    assert float(scores[top].sum()) == pytest.approx(float(v.latents[-1].sum() + v.error[-1]), rel=1e-5)
    summed = site_scores(effects, saes, None)  # untemplated prompts: one site per submodule
    assert list(summed) == [Site.at(PLANTED_HOOK, None)]


def test_planted_circuit_is_recovered_at_both_levels():
    model, saes, task = planted()
    effects = node_effects(model, saes, task, "atp", **QUIET)
    h = find_hierarchy(
        model,
        saes,
        task,
        task,
        effects,
        HierarchyConfig(target=0.9, ablation=AblationSpec("zero"), n_random=1),
        MaskConfig(steps=60, sparsity=0.5),
        **QUIET,
    )
    assert h.sites == [Site.at(PLANTED_HOOK, task.n_pos - 1)]
    assert h.site_level.cut.faithfulness >= 0.9 and h.site_level.cut.completeness < 0.2
    assert Node(h.sites[0], 7) in h.features and h.feature_level.reached_target
    assert h.feature_level.size <= 2  # the latent (and at most the error term)


def test_optimiser_takes_one_of_two_redundant_paths_that_attribution_misses():
    model, saes, task = planted_two_paths()
    end = Site.at(PLANTED_HOOK, task.n_pos - 1)
    effects = node_effects(model, saes, task, "atp", **QUIET)
    lat = effects.values[PLANTED_HOOK].latents[-1]
    assert abs(float(lat[DECOY])) > 0 and all(float(lat[c]) == 0 for c in CARRIERS)  # attribution: the decoy
    h = find_hierarchy(
        model,
        saes,
        task,
        task,
        effects,
        HierarchyConfig(target=0.9, ablation=AblationSpec("zero"), n_random=1),
        MaskConfig(steps=100, init_nodes=2),
        **QUIET,
    )
    assert h.sites == [end]
    assert h.optimised is not None and h.optimised.reached_target
    carriers = [c for c in CARRIERS if Node(end, c) in h.features]
    assert len(carriers) == 1 and Node(end, DECOY) not in h.features  # one path suffices
    assert h.optimised.size < h.attribution.size  # attribution takes the decoy (and more) first
    assert h.feature_level.ranking == "optimised"


def test_site_mask_ranks_whole_sites_and_both_site_cuts_are_recorded():
    model, saes, task = planted()
    end = Site.at(PLANTED_HOOK, task.n_pos - 1)
    effects = node_effects(model, saes, task, "atp", **QUIET)
    cfg = HierarchyConfig(target=0.9, ablation=AblationSpec("zero"), n_random=1)
    h = find_hierarchy(model, saes, task, task, effects, cfg, MaskConfig(steps=0, site_steps=40), **QUIET)
    assert h.site_optimised is not None and h.site_attribution is not None
    assert h.site_optimised.size == 1 and h.site_optimised.reached_target and h.sites == [end]
    assert h.site_level is h.site_optimised  # a tie goes to the optimised ranking
    assert h.site_mask_history and h.site_mask_history[-1][2] >= 1  # sites kept, not nodes
    record = HierarchyRecord.from_dict(_without_times(h.to_dict()))
    assert [key for key, _ in record.levels()] == ["sites", "sites_optimised", "attribution"]
    off = find_hierarchy(model, saes, task, task, effects, cfg, MaskConfig(steps=0, site_steps=0), **QUIET)
    assert off.site_optimised is None and off.site_level is off.site_attribution and off.sites == [end]


def test_of_two_site_cuts_the_smaller_is_kept_unless_its_features_cost_more():
    def level(size: int, reached: bool = True) -> Level:
        return Level("x", Measurement(size, 0, 0.9 if reached else 0.5, reached_target=reached))

    # SVA on the embedded model (128 discovery pairs): 11 sites needed 183 nodes, 12 sites 117
    assert _best_skeleton([(level(12), level(117)), (level(11), level(183))]) == 0
    # greater-than (512): 15 sites needed 155, 17 sites 149 -- within 10 %: the fewer sites
    assert _best_skeleton([(level(17), level(149)), (level(15), level(155))]) == 1
    assert _best_skeleton([(level(12), level(117)), (level(11), level(50, False))]) == 0  # must reach
    assert _best_skeleton([(level(12), level(117, False)), (level(14), level(300, False))]) == 0


def _without_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "times"}


def test_a_one_logit_site_is_kept_or_ablated_whole():
    """A site mask's logit is one number: its straight-through keep covers every latent and
    the error, so the site's gradient is the sum of its nodes' (the same hooks as a node mask)."""
    model, saes, task = planted()
    end = Site.at(PLANTED_HOOK, task.n_pos - 1)
    train = Ablator(model, saes, task, AblationSpec("zero"))
    one_step = MaskConfig(steps=1, sparsity=0)
    site = optimise_mask(model, saes, train, [end], {end: torch.tensor([-0.5])}, one_step, **QUIET)
    nodes = optimise_mask(model, saes, train, [end], {end: torch.full((17,), -0.5)}, one_step, **QUIET)
    assert site.logits[end].shape == (1,) and site.history[0][2] == 0  # ablated whole: F of the empty site
    assert site.history[0][1] == pytest.approx(nodes.history[0][1], abs=1e-6)
    assert float(site.logits[end][0]) > -0.5  # F below the aim pulls the whole site on


def test_the_mask_never_sees_held_out_prompts():
    model, saes, task = planted()
    held_out = make_task("ioi", TOK, n=8, seed=5, split="eval")
    seen: list[torch.Tensor] = []
    original = model.forward

    def spy(tokens, *args, **kwargs):
        if torch.is_grad_enabled() and isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long:
            seen.append(tokens.clone())
        return original(tokens, *args, **kwargs)

    train = Ablator(model, saes, task, AblationSpec("zero"))
    sites = [Site.at(PLANTED_HOOK, task.n_pos - 1)]
    init = initial_logits({sites[0]: torch.rand(17)}, 4)
    model.forward = spy
    try:
        result = optimise_mask(model, saes, train, sites, init, MaskConfig(steps=5), **QUIET)
    finally:
        del model.forward
    assert len(seen) == 5 and all(torch.equal(t, task.clean) for t in seen)
    assert not any(t.shape == held_out.clean.shape and torch.equal(t, held_out.clean) for t in seen)
    assert set(result.logits) == set(sites) and result.history[-1][0] == 4
    # minibatches (with per-example reference values) are rows of the discovery prompts only
    seen.clear()
    model, task = tiny_hooked_model(), make_task("ioi", TOK, n=8, split="train")
    saes = random_saes(hook_names(["resid"], range(2)))
    train = Ablator(model, saes, task, AblationSpec("counterfactual"))
    sites = [Site.at("blocks.1.hook_resid_post", task.n_pos - 1)]
    original = model.forward
    model.forward = spy
    try:
        optimise_mask(model, saes, train, sites, {sites[0]: torch.ones(65)}, MaskConfig(steps=4, batch_size=2), **QUIET)
    finally:
        del model.forward
    rows = {tuple(r) for r in task.clean.tolist()}
    assert len(seen) == 4 and all(t.shape[0] == 2 and {tuple(r) for r in t.tolist()} <= rows for t in seen)
    assert not {tuple(r) for t in seen for r in t.tolist()} & {tuple(r) for r in held_out.clean.tolist()}


def test_validate_hierarchy_measures_a_recorded_circuit():
    model, saes, task = planted()
    end = Site.at(PLANTED_HOOK, task.n_pos - 1)
    cfg = HierarchyConfig(ablation=AblationSpec("zero"), n_random=2)
    sites, features = validate_hierarchy(model, saes, task, [end], [Node(end, 7), Node(end)], cfg)
    assert sites.n_latents == 1 and sites.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert features.n_latents == 1 and features.n_errors == 1 and features.faithfulness > 0.9
    assert features.completeness < 0.2 and features.reached_target


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HierarchyConfig(target=0.0), "target faithfulness must be in"),
        (lambda: HierarchyConfig(target=1.2), "target faithfulness must be in"),
        (lambda: HierarchyConfig(ablation=AblationSpec("median")), "unknown .*ablation 'median'"),
        (lambda: HierarchyConfig(ablation=AblationSpec(start_layer=-1)), "start_layer must be >= 0"),
        (lambda: HierarchyConfig(batch_size=0), "batch_size must be >= 1"),
        (lambda: MaskConfig(site_batch_size=0), "mask site_batch_size must be >= 1, got 0"),
        (lambda: DiscoverConfig(mask_batch=-1), "mask batch must be >= 0 prompt pairs"),
    ],
)
def test_bad_hierarchy_settings_are_one_line(make, message):
    with pytest.raises(CircuitsError, match=message):
        make()


def test_the_feature_mask_batch_is_its_own_and_0_means_every_pair():
    assert DiscoverConfig(mask_batch=0).mask().batch_size is None
    cfg = DiscoverConfig(mask_batch=64).mask()
    assert (cfg.batch_size, cfg.site_batch_size) == (64, MaskConfig().site_batch_size)


def test_mask_on_a_two_layer_model_learns_through_later_sites():
    """Gradients reach an early site's mask through a later site's SAE encoder."""
    model = tiny_hooked_model()
    saes = random_saes(hook_names(["resid"], range(2)))
    task = make_task("ioi", TOK, n=8, split="train")
    ab = Ablator(model, saes, task, AblationSpec("mean_corrupt"))
    sites = [Site.at("blocks.0.hook_resid_post", task.n_pos - 1), Site.at("blocks.1.hook_resid_post", task.n_pos - 1)]
    init = {s: torch.full((65,), 1.0) for s in sites}
    result = optimise_mask(model, saes, ab, sites, init, MaskConfig(steps=3, lr=0.05), **QUIET)
    moved = {s: float((result.logits[s] - init[s]).abs().max()) for s in sites}
    assert all(m > 0 for m in moved.values())


@pytest.mark.parametrize("how", ["mean", "counterfactual"])
@pytest.mark.parametrize(("batch_size", "width"), [(None, 65), (5, 65), (None, 1)])
def test_mask_steps_in_passes_take_the_full_batch_gradient(monkeypatch, how, batch_size, width):
    """A step over more prompts than one pass holds sums its passes' gradients: every step's
    gradient is the one pass's (a float64 model: only summation order differs); also for a
    mask over whole sites (one logit a site)."""
    import circuits.circuit.optimise as optimise

    grads: list[list[torch.Tensor]] = []

    class Recording(torch.optim.Adam):
        def step(self, closure=None):
            grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    model, saes = in_float64(tiny_hooked_model(), random_saes(hook_names(["resid"], range(2))))
    task = make_task("ioi", TOK, n=8, split="train")
    ab = Ablator(model, saes, task, AblationSpec(how))
    sites = [Site.at("blocks.0.hook_resid_post", 2), Site.at("blocks.1.hook_resid_post", task.n_pos - 1)]
    init = {s: torch.linspace(-1.0, 1.0, width) * (i + 1) + (width == 1) * 0.5 for i, s in enumerate(sites)}
    cfg = MaskConfig(steps=4, lr=0.05, sparsity=0.5, aim=1.5, batch_size=batch_size)  # aim 1.5: F counts
    one = optimise_mask(model, saes, ab, sites, init, cfg, **QUIET)
    monkeypatch.setattr(optimise, "MASK_TOKENS_PER_PASS", 3 * task.n_pos)  # passes of 3, 3, 2 (or 3, 2) prompts
    passes = optimise_mask(model, saes, ab, sites, init, cfg, **QUIET)
    assert len(grads) == 8 and any(g.abs().max() > 0 for step in grads[:4] for g in step)
    for a, b in zip(grads[:4], grads[4:], strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.allclose(y, x, rtol=1e-5, atol=1e-9)  # the logits are float32
    for s in sites:
        assert torch.allclose(passes.logits[s], one.logits[s], rtol=0, atol=1e-6)
    assert [h[1] for h in passes.history] == pytest.approx([h[1] for h in one.history], rel=1e-7)
