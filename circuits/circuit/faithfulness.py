"""Faithfulness by ablation: one measurement, one curve, one cut, one pool of random circuits.

A circuit (nodes, sites, or both; a site is every latent and the error term of a submodule at
a position) is measured on an ``Ablator`` (a task, an SAE set and an ``AblationSpec``, streamed
in batches) as a ``Measurement``: its size (latent nodes and error nodes; a site-level circuit
counts its sites), F (everything outside it ablated), completeness (F of its complement, ~0
when the circuit leaves nothing behind), the mean F of random circuits of the same size drawn
from a ``Pool``, and whether F reaches a target. Every level of a hierarchical circuit and
every point of every curve is one.

* ``measure``: one circuit.
* ``curve``: a ranking's top-k prefixes for given sizes, each with its random baseline.
* ``cut``: a ranking's smallest prefix reaching a target (log-spaced sizes, then bisection
  between the last miss and the first hit), measured, with the curve up to a little beyond
  it: a ``Level``.
* ``live_pool``: the latents of some sites active on some clean prompt, and their error
  terms (an inactive latent ablated to its mean ~ 0 does nothing, so drawing from all
  latents would make the baseline trivially empty); ``Pool(sites, [], rng)`` for sites.

For one call each: ``faithfulness`` (F and completeness), ``faithfulness_curve`` (the curve
of a circuit's nodes by |effect|, with MIB's CPR and CMD) and ``prune_by_ablation``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution.splice import spliced
from circuits.circuit.ablation import Ablator, ablatable_hooks
from circuits.circuit.config import BATCH_SIZE, AblationSpec, HierarchyConfig
from circuits.circuit.graph import nodes_of
from circuits.circuit.record import AblationPruning, attach, record_of
from circuits.core.config import Result, field_default
from circuits.core.parallel import all_reduce, is_main
from circuits.core.vocab import METRIC, Node, Site
from sae.saeset import SAESet
from tasks.task import Task

Circuit = list[Node | Site]


@dataclass
class Measurement(Result):
    """One circuit measured by ablation: its size, F, completeness (F of the complement),
    the mean F of random circuits of the same size, and whether F reaches the target; None
    where not measured (curve points have no completeness and no target). A site-level
    circuit counts its sites in ``n_latents`` (``n_errors`` 0), as circuit files do."""

    n_latents: int
    n_errors: int
    faithfulness: float
    completeness: float | None = None
    random_faithfulness: float | None = None
    reached_target: bool | None = None

    @property
    def size(self) -> int:
        return self.n_latents + self.n_errors

    def to_dict(self) -> dict:
        """The circuit file's shape (sizes as ``n_nodes``, ``n_error_nodes``), without what
        was not measured."""
        out = {
            "n_nodes": self.n_latents,
            "n_error_nodes": self.n_errors,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
            "random_faithfulness": self.random_faithfulness,
            "reached_target": self.reached_target,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class Level(Result):
    """A ranking cut at its smallest prefix reaching a target: the cut's measurement and F
    over the ranking's prefixes (``cut``)."""

    ranking: str  # e.g. "attribution" or "optimised"
    cut: Measurement
    curve: list[Measurement] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return self.cut.size

    @property
    def reached_target(self) -> bool:
        return bool(self.cut.reached_target)

    def to_dict(self) -> dict:
        points = [p.to_dict() for p in self.curve]
        return {"ranking": self.ranking, **self.cut.to_dict(), "curve": points, "seconds": self.seconds}


@dataclass
class FaithfulnessCurve(Result):
    """A circuit's nodes ranked by |effect| under one ablation spec: F of log-spaced
    prefixes with a random same-size baseline, the whole list measured, MIB's CPR (area
    under F) and CMD (area under |1 - F|), and optionally its cut at a target (``pruned``,
    written to ``pruned_path``)."""

    spec: AblationSpec
    m_model: float
    m_empty: float
    whole: Measurement
    curve: list[Measurement]
    cpr: float
    cmd: float
    pruned: Measurement | None = None
    pruned_path: str = ""

    @property
    def ablation(self) -> str:
        return self.spec.kind

    @property
    def faithfulness(self) -> float:
        return self.whole.faithfulness

    @property
    def completeness(self) -> float:
        return self.whole.completeness

    def to_dict(self) -> dict:
        out = {
            "ablation": self.spec.kind,
            "m_model": self.m_model,
            "m_empty": self.m_empty,
            "faithfulness": self.whole.faithfulness,
            "completeness": self.whole.completeness,
            "cpr": self.cpr,
            "cmd": self.cmd,
            "curve": [p.to_dict() for p in self.curve],
            "n_nodes": self.whole.n_latents,
            "n_error_nodes": self.whole.n_errors,
        }
        if self.pruned is not None:
            out["pruned"] = self.pruned.to_dict() | {"path": self.pruned_path}
        return out | {"start_layer": self.spec.start_layer}


@dataclass
class Pool:
    """What random same-size circuits are drawn from, in a fixed order: latent nodes (or
    sites, for site-level circuits) and error nodes, sampled by ``rng`` without replacement
    (at most all of each)."""

    latents: list[Node | Site]
    errors: list[Node]
    rng: random.Random

    def draw(self, n_latents: int, n_errors: int) -> Circuit:
        return self.rng.sample(self.latents, min(n_latents, len(self.latents))) + self.rng.sample(
            self.errors, min(n_errors, len(self.errors))
        )


@torch.no_grad()
def live_pool(ab: Ablator, sites: list[Site], rng: random.Random) -> Pool:
    """The latents of ``sites`` active on some clean prompt of ``ab``'s task (at the site's
    position, or at any for a site at every position), and the sites' error terms, in site
    order; one streamed pass (activity OR-ed over batches, all-reduced)."""
    hooks = list(dict.fromkeys(s.hook for s in sites))
    active = {h: torch.zeros(ab.n_pos, ab.saes[h].cfg.d_sae) for h in hooks}
    for rows in ab.batches() if hooks else []:
        with spliced(ab.model, ab.saes, hooks=hooks) as nodes:
            ab.model(ab.task.clean[rows])
        for h in hooks:
            active[h] += (nodes[h].latents != 0).any(0).float().cpu()
    all_reduce(list(active.values()))
    latents: list[Node | Site] = []
    for s in sites:
        on = active[s.hook] > 0
        on = on.any(0) if s.position is None else on[s.position]
        latents += [Node(s, int(i)) for i in on.nonzero().flatten()]
    return Pool(latents, [Node(s, None) for s in sites], rng)


def model_sites(ab: Ablator) -> list[Site]:
    """Every ablatable submodule of ``ab`` at every position: the whole model's pool."""
    return [Site.at(h, p) for h in ablatable_hooks(ab.saes) if ab.ablatable(h) for p in range(ab.n_pos)]


def counts(circuit: Circuit) -> tuple[int, int]:
    """(latent nodes or sites, error nodes)."""
    n_err = sum(1 for c in circuit if not isinstance(c, Site) and c.latent is None)
    return len(circuit) - n_err, n_err


def random_faithfulness(ab: Ablator, pool: Pool, n_latents: int, n_errors: int, n_random: int) -> float:
    """The mean F of ``n_random`` circuits drawn from ``pool`` with these sizes."""
    return sum(ab.faithfulness(pool.draw(n_latents, n_errors)) for _ in range(n_random)) / n_random


def measure(
    ab: Ablator,
    circuit: Circuit,
    pool: Pool | None = None,
    n_random: int = 3,
    target: float | None = None,
) -> Measurement:
    """F and completeness of ``circuit`` on ``ab``'s prompts, the random baseline (with a
    pool) and whether F reaches ``target`` (when given)."""
    n_lat, n_err = counts(circuit)
    f = ab.faithfulness(circuit)
    completeness = ab.completeness(circuit)
    rand = None if pool is None else random_faithfulness(ab, pool, n_lat, n_err, n_random)
    return Measurement(n_lat, n_err, f, completeness, rand, None if target is None else f >= target)


class _Prefixes:
    """F of a ranking's top-k prefixes on one Ablator, each size measured once."""

    def __init__(self, ab: Ablator, ranking: Circuit):
        self.ab, self.ranking, self.fs = ab, ranking, {}

    def f(self, k: int) -> float:
        if k not in self.fs:
            self.fs[k] = self.ab.faithfulness(self.ranking[:k]) if k else 0.0
        return self.fs[k]

    def curve(self, sizes: list[int], pool: Pool | None, n_random: int, progress: bool = False) -> list[Measurement]:
        out = []
        for k in tqdm(sizes, desc="faithfulness curve", disable=not (progress and is_main())):
            n_lat, n_err = counts(self.ranking[:k])
            rand = None if pool is None else random_faithfulness(self.ab, pool, n_lat, n_err, n_random)
            out.append(Measurement(n_lat, n_err, self.f(k), random_faithfulness=rand))
        return out


def curve(
    ab: Ablator, ranking: Circuit, sizes: list[int], pool: Pool | None = None, n_random: int = 3
) -> list[Measurement]:
    """F of the top-k prefixes of ``ranking`` for each k in ``sizes``, each with the mean F
    of ``n_random`` same-size random circuits from ``pool`` (when given)."""
    return _Prefixes(ab, ranking).curve(sizes, pool, n_random)


def cut(
    ab: Ablator,
    ranking: Circuit,
    target: float,
    pool: Pool | None = None,
    n_random: int = 3,
    name: str = "attribution",
) -> Level:
    """``ranking`` cut at its smallest prefix whose F reaches ``target`` on ``ab``'s prompts
    (``smallest_prefix``; the whole ranking when none does), measured there (completeness,
    the random baseline, the target), with F over log-spaced prefixes up to the cut and a
    little beyond (``max(2k, 10)``), each with its random baseline."""
    start = time.perf_counter()
    prefixes = _Prefixes(ab, ranking)
    n = len(ranking)
    k, f = smallest_prefix(n, prefixes.f, target)
    points = prefixes.curve([s for s in log_sizes(n) if s <= max(2 * k, 10)], pool, n_random)
    n_lat, n_err = counts(ranking[:k])
    completeness = ab.completeness(ranking[:k]) if k else 1.0
    rand = None if pool is None else (random_faithfulness(ab, pool, n_lat, n_err, n_random) if k else 0.0)
    at = Measurement(n_lat, n_err, f, completeness, rand, f >= target)
    return Level(name, at, points, time.perf_counter() - start)


def smallest_prefix(n: int, f_of: Callable[[int], float], target: float) -> tuple[int, float]:
    """The smallest k in 1..n with ``f_of(k) >= target``, assuming F grows with k: searched
    over log-spaced sizes, then bisected between the last miss and the first hit; ``(n,
    f_of(n))`` when none does (and ``(0, 0.0)`` for n = 0). Each k is measured once."""
    if n == 0:
        return 0, 0.0
    cache: dict[int, float] = {}

    def f(k: int) -> float:
        if k not in cache:
            cache[k] = f_of(k)
        return cache[k]

    lo = 0
    for k in log_sizes(n):
        if f(k) >= target:
            hi = k
            while hi - lo > 1:  # F(lo) < target <= F(hi)
                mid = (lo + hi) // 2
                if f(mid) >= target:
                    hi = mid
                else:
                    lo = mid
            return hi, f(hi)
        lo = k
    return n, f(n)


def log_sizes(n: int, per_decade: int = 6) -> list[int]:
    """1 .. n, about ``per_decade`` sizes per factor of 10, always including n."""
    if n < 1:
        return []
    count = max(2, int(math.log10(max(n, 2)) * per_decade) + 1)
    return sorted({max(1, round(n ** (i / (count - 1)))) for i in range(count)} | {n})


def areas(sizes: list[int], fs: list[float], total: int) -> tuple[float, float]:
    """MIB's CPR (area under F) and CMD (area under |1 - F|) over circuit size as a fraction
    of ``total`` (trapezoid rule from F(0) = 0)."""
    xs = [0.0] + [k / max(total, 1) for k in sizes]
    fs = [0.0] + list(fs)
    cpr = sum((xs[i + 1] - xs[i]) * (fs[i + 1] + fs[i]) / 2 for i in range(len(sizes)))
    cmd = sum((xs[i + 1] - xs[i]) * (abs(1 - fs[i + 1]) + abs(1 - fs[i])) / 2 for i in range(len(sizes)))
    return cpr, cmd


def ranked_nodes(graph: nx.DiGraph) -> list[Node]:
    """A circuit's SAE nodes (latents and error terms; embeddings are not ablatable), largest
    |effect| first."""
    nodes = [(graph.nodes[n]["effect"], node) for n, node in nodes_of(graph).items() if not node.is_embed]
    nodes.sort(key=lambda en: -abs(en[0]))
    return [node for _, node in nodes]


def faithfulness(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    circuit: Circuit,
    spec: AblationSpec | None = None,
    batch_size: int = BATCH_SIZE,
) -> Measurement:
    """Faithfulness and completeness of ``circuit`` on ``task``."""
    return measure(Ablator(model, saes, task, spec, batch_size), circuit)


def faithfulness_curve(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    ranked: list[Node],
    spec: AblationSpec | None = None,
    n_random: int = 3,
    progress: bool = True,
    batch_size: int = BATCH_SIZE,
) -> FaithfulnessCurve:
    """F of the top-k ranked nodes for log-spaced k, with random circuits of the same size
    (same numbers of latents and error nodes, from the whole model's live pool) as a
    baseline; the whole list's completeness; CPR = area under F, CMD = area under |1 - F|,
    over circuit size as a fraction of the ranked list (trapezoid rule, F(0) = 0)."""
    spec = spec or AblationSpec()
    ab = Ablator(model, saes, task, spec, batch_size)
    pool = live_pool(ab, model_sites(ab), random.Random(spec.seed))
    points = _Prefixes(ab, ranked).curve(log_sizes(len(ranked)), pool, n_random, progress)
    last = points[-1] if points else Measurement(0, 0, 0.0)
    whole = Measurement(*counts(ranked), last.faithfulness, ab.completeness(ranked), last.random_faithfulness)
    cpr, cmd = areas([p.size for p in points], [p.faithfulness for p in points], len(ranked))
    return FaithfulnessCurve(spec, ab.ref.m_model, ab.ref.m_empty, whole, points, cpr, cmd)


def prune_by_ablation(
    graph: nx.DiGraph,
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    target: float = field_default(HierarchyConfig, "target"),
    spec: AblationSpec | None = None,
    batch_size: int = BATCH_SIZE,
) -> tuple[nx.DiGraph, Measurement]:
    """The circuit cut to its smallest top-|effect| prefix reaching faithfulness ``target``
    (embeddings kept), and what that prefix achieves (F, the target)."""
    spec = spec or AblationSpec()
    ranked = ranked_nodes(graph)
    k, f = smallest_prefix(len(ranked), _Prefixes(Ablator(model, saes, task, spec, batch_size), ranked).f, target)
    keep = set(ranked[:k])
    kept = [n for n, node in nodes_of(graph).items() if node.is_embed or node in keep]
    small = graph.subgraph(kept + [METRIC]).copy()
    pruning = AblationPruning(target=target, faithfulness=f, ablation=spec.kind, start_layer=spec.start_layer, nodes=k)
    attach(small, replace(record_of(graph), pruned_by_ablation=pruning))
    return small, Measurement(*counts(ranked[:k]), f, reached_target=f >= target)
