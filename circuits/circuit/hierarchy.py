"""Hierarchical circuits: the sites that carry a behaviour, then the features inside them.

The embedded model computes its tasks densely at the feature level (thousands of latents
are needed for faithfulness) but sparsely at the level of **sites** — a submodule at a
position, all its latents and its error term together. So a circuit is found in two levels,
each validated on held-out prompts under one ablation convention (``circuits.circuit.ablation``):

1. **Sites**: ranked by their summed attribution effect (latents + error, from the node
   pass on the discovery prompts); the skeleton is the smallest top-ranked set whose
   faithfulness reaches the target on the held-out prompts.
2. **Features** inside the skeleton: every latent and error term of the kept sites, ranked
   by attribution and by the mask optimiser (``circuits.circuit.optimise``, trained on the discovery
   prompts only); each ranking is cut to its smallest prefix reaching the target on the
   held-out prompts, and the smaller cut is the circuit.

Each level reports its size (error nodes counted apart), faithfulness, completeness (F of
the complement) and the mean F of random circuits of the same size drawn from the same pool
(all sites; the skeleton's live nodes). A templated task (one template, labelled positions)
has one site per submodule and position; other tasks (e.g. JSONL prompts of mixed lengths,
right-padded) have one site per submodule, all positions together (position ``*``), as their
nodes do — positions do not line up across such prompts.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from circuits.attribution.nodes import NodeEffects
from circuits.attribution.splice import spliced
from circuits.circuit.ablation import (
    Ablator,
    CurvePoint,
    Masks,
    ablatable_hooks,
    check_ablation,
    empty_masks,
    log_sizes,
    node_counts,
    node_masks,
    ranked_nodes,
    smallest_prefix,
)
from circuits.circuit.config import Ablation, HierarchyConfig, MaskConfig
from circuits.circuit.optimise import MaskResult, initial_logits, optimise_mask
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node, Site, Submodule
from sae.saeset import SAESet
from tasks.task import Task


@dataclass
class Level:
    """One level of a hierarchical circuit, measured on held-out prompts: its size (sites,
    or latent nodes and error nodes), F, completeness, the random same-size baseline, and F
    over the ranking's prefixes."""

    ranking: str  # "attribution" or "optimised"
    n_nodes: int
    n_error_nodes: int
    faithfulness: float
    completeness: float
    random_faithfulness: float
    reached_target: bool
    curve: list[CurvePoint]
    seconds: float

    @property
    def size(self) -> int:
        return self.n_nodes + self.n_error_nodes


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
    site_level: Level
    features: list[Node]
    feature_level: Level  # the chosen ranking's cut
    attribution: Level  # inside the skeleton, ranked by |attribution|
    optimised: Level | None  # inside the skeleton, ranked by the mask (None: no mask steps)
    mask_history: list[tuple[int, float, int]]
    times: dict[str, float]
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
        out = asdict(replace(self, ranked={}, widths={}))  # Site keys are not JSON
        out.pop("ranked")
        out.pop("widths")
        out["sites"] = [site_record(s) for s in self.sites]
        out["features"] = [n.id for n in self.features]
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


def site_masks(sites: list[Site], saes: SAESet, n_pos: int) -> Masks:
    """Every latent and the error term of each site (position None: every position)."""
    masks = empty_masks(saes, n_pos)
    for s in sites:
        at = slice(None) if s.position is None else s.position
        masks[s.hook].latents[at] = True
        masks[s.hook].error[at] = True
    return masks


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
    """The hierarchical circuit of a task from its node effects on the discovery prompts."""
    cfg, mask_cfg = cfg or HierarchyConfig(), mask_cfg or MaskConfig()
    check_ablation(cfg.ablation)
    labels = list(discovery.position_labels) if discovery.position_labels is not None else None
    if labels is not None and held_out.position_labels != discovery.position_labels:
        raise CircuitsError("the held-out prompts must follow the discovery prompts' template (position labels)")
    times: dict[str, float] = {}
    start = time.perf_counter()
    test = Ablator(model, saes, held_out, cfg.ablation, cfg.seed, cfg.start_layer)
    scores = {s: v for s, v in site_scores(effects, saes, labels).items() if test.ablatable(s.hook)}
    sites_ranked = ranked_sites(scores)
    rng = random.Random(cfg.seed)

    def random_sites(k: int) -> Masks:
        return site_masks(rng.sample(sites_ranked, k), saes, test.n_pos)

    site_level = _level(
        test,
        "attribution",
        lambda k: site_masks(sites_ranked[:k], saes, test.n_pos),
        lambda k: (k, 0),
        len(sites_ranked),
        random_sites,
        cfg,
    )
    sites = sites_ranked[: site_level.n_nodes]
    times["sites"] = site_level.seconds = time.perf_counter() - start

    # features inside the skeleton
    d_sae = {s: int(scores[s].numel()) - 1 for s in sites}
    candidates = [(s, i) for s in sites for i in range(d_sae[s] + 1)]
    live = _live(test, sites, d_sae)
    by_attribution = sorted(candidates, key=lambda c: -abs(float(scores[c[0]][c[1]])))

    def nodes_of(ranked: list[tuple[Site, int]], k: int) -> list[Node]:
        return [site_nodes(s, i, d_sae[s]) for s, i in ranked[:k]]

    random_features = _random_features(live, d_sae, rng, saes, test.n_pos)

    def feature_level(ranking: str, ranked: list[tuple[Site, int]]) -> Level:
        t0 = time.perf_counter()
        out = _level(
            test,
            ranking,
            lambda k: node_masks(nodes_of(ranked, k), saes, test.n_pos),
            lambda k: node_counts(nodes_of(ranked, k)),
            len(ranked),
            lambda k: random_features(*node_counts(nodes_of(ranked, k))),
            cfg,
        )
        out.seconds = time.perf_counter() - t0
        return out

    attribution = feature_level("attribution", by_attribution)
    times["features (attribution prefix)"] = attribution.seconds
    optimised, history, by_mask = None, [], by_attribution
    if mask_cfg.steps > 0 and sites:
        t0 = time.perf_counter()
        train = Ablator(model, saes, discovery, cfg.ablation, cfg.seed, cfg.start_layer)
        init = initial_logits({s: scores[s] for s in sites}, mask_cfg.init_nodes)
        mask: MaskResult = optimise_mask(model, saes, train, sites, init, mask_cfg, progress)
        times["mask optimiser"] = time.perf_counter() - t0
        history = mask.history
        # ties (e.g. nodes the mask never moved) broken by attribution
        by_mask = sorted(candidates, key=lambda c: (-float(mask.logits[c[0]][c[1]]), -abs(float(scores[c[0]][c[1]]))))
        optimised = feature_level("optimised", by_mask)
        times["features (optimised)"] = optimised.seconds
    chosen, ranked = attribution, by_attribution
    if optimised is not None and (
        optimised.reached_target > attribution.reached_target
        or (optimised.reached_target == attribution.reached_target and optimised.size <= attribution.size)
    ):
        chosen, ranked = optimised, by_mask
    return HierarchicalCircuit(
        cfg.ablation,
        cfg.start_layer,
        cfg.target,
        test.ref.m_model,
        test.ref.m_empty,
        held_out.n_examples,
        sites,
        site_level,
        nodes_of(ranked, chosen.size),
        chosen,
        attribution,
        optimised,
        history,
        times,
        {"attribution": by_attribution} | ({"optimised": by_mask} if optimised is not None else {}),
        d_sae,
    )


def _live(ab: Ablator, sites: list[Site], d_sae: dict[Site, int]) -> list[tuple[Site, int]]:
    """The sites' latents active on some held-out clean prompt, and their error terms: the
    pool of the random baseline (an inactive latent ablated to ~0 does nothing)."""
    with torch.no_grad(), spliced(ab.model, ab.saes, hooks=sorted({s.hook for s in sites})) as nodes:
        ab.model(ab.task.clean)
    out = []
    for s in sites:
        lat = nodes[s.hook].latents
        active = (lat != 0).flatten(0, -2).any(0) if s.position is None else (lat[:, s.position] != 0).any(0)
        out += [(s, int(i)) for i in active.nonzero().flatten()] + [(s, d_sae[s])]
    return out


def _random_features(
    live: list[tuple[Site, int]], d_sae: dict[Site, int], rng: random.Random, saes: SAESet, n_pos: int
):
    """Draws of random circuits from the live pool: ``(k latents, k error terms) -> masks``."""
    lat = [c for c in live if c[1] != d_sae[c[0]]]
    err = [c for c in live if c[1] == d_sae[c[0]]]

    def draw(k_lat: int, k_err: int) -> Masks:
        picked = rng.sample(lat, min(k_lat, len(lat))) + rng.sample(err, min(k_err, len(err)))
        return node_masks([site_nodes(s, i, d_sae[s]) for s, i in picked], saes, n_pos)

    return draw


def _level(
    ab: Ablator,
    ranking: str,
    masks_of,
    counts_of,
    n: int,
    random_masks,
    cfg: HierarchyConfig,
    target: float | None = None,
) -> Level:
    """Cut a ranking at its smallest prefix reaching the target on ``ab``'s (held-out)
    prompts; F over log-spaced prefixes up to the cut (and a little beyond) with a random
    same-size baseline at each; completeness and the random baseline at the cut."""
    f_of = {}

    def faith(k: int) -> float:
        if k not in f_of:
            f_of[k] = ab.ref.of(ab.metric_keeping(masks_of(k))) if k else 0.0
        return f_of[k]

    def random_f(k: int) -> float:
        return sum(ab.ref.of(ab.metric_keeping(random_masks(k))) for _ in range(cfg.n_random)) / cfg.n_random

    k, f = smallest_prefix(n, faith, cfg.target)
    curve = []
    for size in [s for s in log_sizes(n) if s <= max(2 * k, 10)]:
        curve.append(CurvePoint(*counts_of(size), faith(size), random_f(size)))
    n_lat, n_err = counts_of(k)
    completeness = ab.ref.of(ab.metric_removing(masks_of(k))) if k else 1.0
    return Level(ranking, n_lat, n_err, f, completeness, random_f(k) if k else 0.0, f >= cfg.target, curve, 0.0)


def validate_hierarchy(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    sites: list[Site],
    features: list[Node],
    how: Ablation = "mean",
    start_layer: int = 0,
    target: float = 0.9,
    n_random: int = 3,
    seed: int = 0,
) -> tuple[Level, Level]:
    """A recorded hierarchical circuit measured again on ``task``: (site level, feature
    level), each with F, completeness and its random same-size baseline."""
    ab = Ablator(model, saes, task, how, seed, start_layer)
    cfg = HierarchyConfig(target, how, start_layer, n_random, seed)
    rng = random.Random(seed)
    pool = [s for s in all_sites(saes, task) if ab.ablatable(s.hook)]
    d_sae = {s: saes[s.hook].cfg.d_sae for s in sites}
    random_features = _random_features(_live(ab, sites, d_sae), d_sae, rng, saes, ab.n_pos)
    n_lat, n_err = node_counts(features)

    site_level = _measure(
        ab, site_masks(sites, saes, ab.n_pos), lambda: site_masks(rng.sample(pool, len(sites)), saes, ab.n_pos), cfg
    )
    site_level.n_nodes = len(sites)
    feature_level = _measure(ab, node_masks(features, saes, ab.n_pos), lambda: random_features(n_lat, n_err), cfg)
    feature_level.n_nodes, feature_level.n_error_nodes = n_lat, n_err
    return site_level, feature_level


def validate_recorded(
    graph: nx.DiGraph,
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    how: Ablation = "mean",
    start_layer: int = 0,
    seed: int = 0,
) -> tuple[Level, Level]:
    """`validate_hierarchy` of the hierarchical circuit ``graph`` records (its sites, its
    features by |effect|, its target) on ``task``."""
    h = record_of(graph).hierarchy
    return validate_hierarchy(model, saes, task, h.skeleton, ranked_nodes(graph), how, start_layer, h.target, seed=seed)


def all_sites(saes: SAESet, task: Task) -> list[Site]:
    """Every SAE site of a task: per position for templated prompts, else per submodule."""
    hooks = ablatable_hooks(saes)
    if task.position_labels is None:
        return [Site.at(h, None) for h in hooks]
    labels = list(task.position_labels)
    return [Site.at(h, p, labels) for h in hooks for p in range(task.n_pos)]


def _measure(ab: Ablator, masks: Masks, random_masks, cfg: HierarchyConfig) -> Level:
    start = time.perf_counter()
    f = ab.ref.of(ab.metric_keeping(masks))
    completeness = ab.ref.of(ab.metric_removing(masks))
    rand = sum(ab.ref.of(ab.metric_keeping(random_masks())) for _ in range(cfg.n_random)) / cfg.n_random
    return Level("recorded", 0, 0, f, completeness, rand, f >= cfg.target, [], time.perf_counter() - start)
