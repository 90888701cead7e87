"""Hierarchical circuits: the sites that carry a behaviour, then the features inside them.

The embedded model computes its tasks densely at the feature level (thousands of latents
are needed for faithfulness) but sparsely at the level of **sites** — a submodule at a
position, all its latents and its error term together. So a circuit is found in two levels,
each validated on held-out prompts under one ablation convention (``circuits.circuit.ablation``):

1. **Sites**: ranked by their summed attribution effect (latents + error, from the node
   pass on the discovery prompts) and by the mask optimiser over whole sites (trained on the
   discovery prompts only); each ranking is cut to its smallest prefix reaching the target
   on the held-out prompts. Where the cuts differ, the features are found inside both and
   the cut of fewer sites is the skeleton unless its feature level is over 10 % larger.
2. **Features** inside the skeleton: every latent and error term of the kept sites, ranked
   by attribution and by the mask optimiser (``circuits.circuit.optimise``, trained on the discovery
   prompts only); each ranking is cut to its smallest prefix reaching the target on the
   held-out prompts, and the smaller cut is the circuit.

Each level is a ranking cut at a target (``circuits.circuit.faithfulness.cut``): its size
(error nodes counted apart), faithfulness, completeness (F of the complement) and the mean F
of random circuits of the same size drawn from the same pool (all sites; the skeleton's live
nodes), all streamed over the held-out prompts in batches. A templated task (one template, labelled positions)
has one site per submodule and position; other tasks (e.g. JSONL prompts of mixed lengths,
right-padded) have one site per submodule, all positions together (position ``*``), as their
nodes do — positions do not line up across such prompts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, fields, replace

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from circuits.attribution.nodes import NodeEffects
from circuits.circuit.ablation import Ablator, ablatable_hooks
from circuits.circuit.config import HierarchyConfig, MaskConfig
from circuits.circuit.faithfulness import Level, Measurement, Pool, cut, live_pool, measure, ranked_nodes
from circuits.circuit.optimise import MaskResult, initial_logits, optimise_mask
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node, Site, Submodule
from sae.saeset import SAESet
from tasks.task import Task


@dataclass
class HierarchicalCircuit:
    """Sites, then features inside them, each level validated on the held-out prompts."""

    ablation: str
    start_layer: int
    target: float
    m_model: float  # held-out prompts, plain model
    m_empty: float  # held-out prompts, every node ablated
    n_held_out: int
    sites: list[Site]
    site_level: Level  # the chosen site ranking's cut
    features: list[Node]
    feature_level: Level  # the chosen ranking's cut
    attribution: Level  # inside the skeleton, ranked by |attribution|
    optimised: Level | None  # inside the skeleton, ranked by the mask (None: no mask steps)
    mask_history: list[tuple[int, float, int]]
    times: dict[str, float]
    site_attribution: Level | None = None  # sites ranked by |summed attribution|
    site_optimised: Level | None = None  # sites ranked by the site mask (None: no site mask steps)
    site_mask_history: list[tuple[int, float, int]] = field(default_factory=list)
    other_feature_level: Level | None = None  # the feature level inside the other site cut, not kept
    # per ranking, the skeleton's (site, index into its [d_sae + 1] row) in order, and each
    # site's d_sae; not saved (rebuilt by find_hierarchy), read as nodes with ``ranking``
    ranked: dict[str, list[tuple[Site, int]]] = field(default_factory=dict, repr=False)
    widths: dict[Site, int] = field(default_factory=dict, repr=False)

    def ranking(self, name: str) -> list[Node]:
        """Every node of the skeleton in the ``attribution`` or ``optimised`` order."""
        return [site_nodes(s, i, self.widths[s]) for s, i in self.ranked.get(name, [])]

    @property
    def reached_target(self) -> bool:
        return self.site_level.reached_target and self.feature_level.reached_target

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ranked", "widths")}
        levels = ("site_level", "feature_level", "attribution", "optimised", "site_attribution", "site_optimised")
        for key in (*levels, "other_feature_level"):
            out[key] = None if out[key] is None else out[key].to_dict()
        out["sites"] = [site_record(s) for s in self.sites]  # Site keys are not JSON
        out["features"] = [n.id for n in self.features]
        out["mask_history"] = [tuple(h) for h in self.mask_history]
        out["site_mask_history"] = [tuple(h) for h in self.site_mask_history]
        out["times"] = dict(self.times)
        return out


def site_record(site: Site) -> dict:
    return {"id": site.id, "hook": site.hook, "position": site.position, "label": site.label}


def site_from_record(record: dict) -> Site:
    return Site(Submodule.parse(record["hook"]), record.get("position"), record.get("label", ""))


def site_scores(effects: NodeEffects, saes: SAESet, labels: list[str] | None) -> dict[Site, torch.Tensor]:
    """Per SAE site, its nodes' attribution effects, latents then the error term
    (``[d_sae + 1]``); sites at every position (summed) when ``labels`` is None."""
    out = {}
    for h in ablatable_hooks(saes):
        v = effects.values[h]
        table = torch.cat([v.latents, v.error.unsqueeze(-1)], dim=-1)  # [pos, d_sae + 1]
        if labels is None:
            out[Site.at(h, None)] = table.sum(0)
        else:
            out.update({Site.at(h, p, labels): table[p] for p in range(table.shape[0])})
    return out


def ranked_sites(scores: dict[Site, torch.Tensor]) -> list[Site]:
    """Sites by |summed effect|, largest first."""
    return sorted(scores, key=lambda s: -abs(float(scores[s].sum())))


def site_nodes(site: Site, index: int, d_sae: int) -> Node:
    """The node at ``index`` of a site's ``[d_sae + 1]`` row (the last is the error)."""
    return Node(site, None if index == d_sae else index)


def find_hierarchy(
    model: HookedTransformer,
    saes: SAESet,
    discovery: Task,
    held_out: Task,
    effects: NodeEffects,
    cfg: HierarchyConfig | None = None,
    mask_cfg: MaskConfig | None = None,
    progress: bool = True,
) -> HierarchicalCircuit:
    """The hierarchical circuit of a task from its node effects on the discovery prompts:
    the sites ranked by summed effect and by a mask over sites; inside them, every node ranked
    by |attribution| and by the mask optimiser; each ranking cut at the target on the
    held-out prompts, the smaller cut (or the one that reaches it) kept at each level."""
    cfg, mask_cfg = cfg or HierarchyConfig(), mask_cfg or MaskConfig()
    labels = list(discovery.position_labels) if discovery.position_labels is not None else None
    if labels is not None and held_out.position_labels != discovery.position_labels:
        raise CircuitsError("the held-out prompts must follow the discovery prompts' template (position labels)")
    times: dict[str, float] = {}
    start = time.perf_counter()
    test = Ablator(model, saes, held_out, cfg.ablation, cfg.batch_size)
    scores = {s: v for s, v in site_scores(effects, saes, labels).items() if test.ablatable(s.hook)}
    sites_ranked = ranked_sites(scores)
    rng = random.Random(cfg.ablation.seed)  # one stream of draws for every baseline
    site_pool = Pool(sites_ranked, [], rng)
    site_attribution = cut(test, sites_ranked, cfg.target, site_pool, cfg.n_random, "attribution")
    times["sites"] = site_attribution.seconds = time.perf_counter() - start
    # the masks' prompts: its construction runs the discovery prompts twice, so only for a mask
    masked = mask_cfg.site_steps > 0 or mask_cfg.steps > 0
    train = Ablator(model, saes, discovery, cfg.ablation, cfg.batch_size) if masked else None
    site_optimised, site_history, by_site_mask = None, [], sites_ranked
    if mask_cfg.site_steps > 0 and len(sites_ranked) > 1:
        t0 = time.perf_counter()
        # every site starts kept, ordered by attribution; the sparsity ramp drops them
        init = initial_logits({s: scores[s].sum().reshape(1) for s in sites_ranked}, len(sites_ranked))
        site_cfg = replace(mask_cfg, steps=mask_cfg.site_steps, batch_size=mask_cfg.site_batch_size)
        site_mask = optimise_mask(model, saes, train, sites_ranked, init, site_cfg, progress, "site mask")
        site_history = site_mask.history
        order = {s: i for i, s in enumerate(sites_ranked)}
        by_site_mask = sorted(sites_ranked, key=lambda s: (-float(site_mask.logits[s][0]), order[s]))
        site_optimised = cut(test, by_site_mask, cfg.target, site_pool, cfg.n_random, "optimised")
        times["site mask"] = time.perf_counter() - t0
    # features inside each skeleton the two site rankings give; the smaller skeleton is kept
    # unless its feature level is materially larger (a tight skeleton can cost more latents
    # than one site saves)
    skeletons = [(site_attribution, sites_ranked[: site_attribution.size])]
    if site_optimised is not None and set(by_site_mask[: site_optimised.size]) != set(skeletons[0][1]):
        skeletons.append((site_optimised, by_site_mask[: site_optimised.size]))
    elif site_optimised is not None:
        skeletons = [(site_optimised, by_site_mask[: site_optimised.size])]  # the same sites: a tie
    inside = [_features(model, saes, train, test, k, scores, cfg, mask_cfg, rng, progress) for _, k in skeletons]
    for f in inside:
        for key, seconds in f.times.items():
            times[key] = times.get(key, 0.0) + seconds
    best = _best_skeleton([(lv, f.chosen) for (lv, _), f in zip(skeletons, inside, strict=True)])
    (site_level, sites), f = skeletons[best], inside[best]
    other = inside[1 - best].chosen if len(inside) == 2 else None
    return HierarchicalCircuit(
        cfg.ablation.kind,
        cfg.ablation.start_layer,
        cfg.target,
        test.ref.m_model,
        test.ref.m_empty,
        held_out.n_examples,
        sites,
        site_level,
        f.nodes(f.ranked[: f.chosen.size]),
        f.chosen,
        f.attribution,
        f.optimised,
        f.history,
        times,
        site_attribution,
        site_optimised,
        site_history,
        other,
        {"attribution": f.by_attribution} | ({"optimised": f.by_mask} if f.optimised is not None else {}),
        f.d_sae,
    )


# a skeleton of fewer sites is kept if its feature level is at most this much larger
FEATURE_TOLERANCE = 1.1


def _best_skeleton(levels: list[tuple[Level, Level]]) -> int:
    """Of (site level, feature level) pairs, the index of the circuit kept: among those
    reaching the target at both levels (else all), the fewest sites whose feature level
    (latents + errors) is within ``FEATURE_TOLERANCE`` of the smallest, then the smaller one."""
    reached = [i for i, (s, f) in enumerate(levels) if s.reached_target and f.reached_target]
    pool = reached or list(range(len(levels)))
    smallest = min(levels[i][1].size for i in pool)
    near = [i for i in pool if levels[i][1].size <= FEATURE_TOLERANCE * smallest]
    return min(near, key=lambda i: (levels[i][0].size, levels[i][1].size))


@dataclass
class _Inside:
    """The feature level inside one skeleton: both rankings' cuts, the chosen one, the mask's
    history, the times of its steps."""

    d_sae: dict[Site, int]
    attribution: Level
    by_attribution: list[tuple[Site, int]]
    optimised: Level | None
    by_mask: list[tuple[Site, int]]
    history: list[tuple[int, float, int]]
    chosen: Level
    ranked: list[tuple[Site, int]]
    times: dict[str, float]

    def nodes(self, ranked: list[tuple[Site, int]]) -> list[Node]:
        return [site_nodes(s, i, self.d_sae[s]) for s, i in ranked]


def _features(
    model: HookedTransformer,
    saes: SAESet,
    train: Ablator | None,
    test: Ablator,
    sites: list[Site],
    scores: dict[Site, torch.Tensor],
    cfg: HierarchyConfig,
    mask_cfg: MaskConfig,
    rng: random.Random,
    progress: bool,
) -> _Inside:
    """Every latent and error term of ``sites`` ranked by |attribution| and by the mask
    optimiser (trained on ``train``'s prompts), each cut at the target on ``test``'s."""
    d_sae = {s: int(scores[s].numel()) - 1 for s in sites}
    candidates = [(s, i) for s in sites for i in range(d_sae[s] + 1)]
    pool = live_pool(test, sites, rng)

    def nodes(ranked: list[tuple[Site, int]]) -> list[Node]:
        return [site_nodes(s, i, d_sae[s]) for s, i in ranked]

    by_attribution = sorted(candidates, key=lambda c: -abs(float(scores[c[0]][c[1]])))
    attribution = cut(test, nodes(by_attribution), cfg.target, pool, cfg.n_random, "attribution")
    times = {"features (attribution prefix)": attribution.seconds}
    optimised, history, by_mask = None, [], by_attribution
    if mask_cfg.steps > 0 and sites:
        t0 = time.perf_counter()
        init = initial_logits({s: scores[s] for s in sites}, mask_cfg.init_nodes)
        mask: MaskResult = optimise_mask(model, saes, train, sites, init, mask_cfg, progress)
        times["mask optimiser"] = time.perf_counter() - t0
        history = mask.history
        # ties (e.g. nodes the mask never moved) broken by attribution
        by_mask = sorted(candidates, key=lambda c: (-float(mask.logits[c[0]][c[1]]), -abs(float(scores[c[0]][c[1]]))))
        optimised = cut(test, nodes(by_mask), cfg.target, pool, cfg.n_random, "optimised")
        times["features (optimised)"] = optimised.seconds
    chosen, ranked = _better(attribution, by_attribution, optimised, by_mask)
    return _Inside(d_sae, attribution, by_attribution, optimised, by_mask, history, chosen, ranked, times)


def _better(attribution: Level, by_attribution: list, optimised: Level | None, by_mask: list) -> tuple[Level, list]:
    """The cut (and its ranking) a level keeps: the one that reaches the target, else the
    smaller, the optimised one on a tie."""
    if optimised is not None and (
        optimised.reached_target > attribution.reached_target
        or (optimised.reached_target == attribution.reached_target and optimised.size <= attribution.size)
    ):
        return optimised, by_mask
    return attribution, by_attribution


def validate_hierarchy(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    sites: list[Site],
    features: list[Node],
    cfg: HierarchyConfig | None = None,
) -> tuple[Measurement, Measurement]:
    """A recorded hierarchical circuit measured again on ``task``: (site level, feature
    level), each with F, completeness, its random same-size baseline (all sites; the
    sites' live nodes) and the target."""
    cfg = cfg or HierarchyConfig()
    ab = Ablator(model, saes, task, cfg.ablation, cfg.batch_size)
    rng = random.Random(cfg.ablation.seed)
    site_pool = Pool([s for s in all_sites(saes, task) if ab.ablatable(s.hook)], [], rng)
    feature_pool = live_pool(ab, sites, rng)
    return (
        measure(ab, sites, site_pool, cfg.n_random, cfg.target),
        measure(ab, features, feature_pool, cfg.n_random, cfg.target),
    )


def validate_recorded(
    graph: nx.DiGraph, model: HookedTransformer, saes: SAESet, task: Task, cfg: HierarchyConfig | None = None
) -> tuple[Measurement, Measurement]:
    """`validate_hierarchy` of the hierarchical circuit ``graph`` records (its sites, its
    features by |effect|) on ``task``, held to its recorded target (``cfg``: the rest)."""
    h = record_of(graph).hierarchy
    cfg = replace(cfg or HierarchyConfig(), target=h.target)
    return validate_hierarchy(model, saes, task, h.skeleton, ranked_nodes(graph), cfg)


def all_sites(saes: SAESet, task: Task) -> list[Site]:
    """Every SAE site of a task: per position for templated prompts, else per submodule."""
    hooks = ablatable_hooks(saes)
    if task.position_labels is None:
        return [Site.at(h, None) for h in hooks]
    labels = list(task.position_labels)
    return [Site.at(h, p, labels) for h in hooks for p in range(task.n_pos)]
