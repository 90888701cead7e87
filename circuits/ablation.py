"""Ablation: switch node sets off and measure the task metric; faithfulness and completeness.

Nodes are ``circuits.vocab.Node`` (position None: every position); node sets travel as
masks, one ``NodeValues`` of booleans per hook. Ablating a node replaces its value by zero,
by its mean over the task's clean prompts at that position (``mean``), or by its value on
another example's clean prompt (``resample``); all hooks are ablated in one forward pass,
each computed from the already-ablated layers before it (docs/design.md, "Ablation").

Faithfulness F(C) = (m(C) - m(empty)) / (m(M) - m(empty)): m(M) the model, m(empty) every
node ablated, m(C) every node outside C ablated. Completeness is F of the complement
(everything but C kept); a complete circuit leaves ~0 behind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution import prepare
from circuits.edges import source_masks
from circuits.errors import CircuitsError
from circuits.graph import nodes_of
from circuits.splice import spliced
from circuits.values import NodeValues
from circuits.vocab import METRIC, Node
from sae.saeset import SAESet
from tasks.task import Task

Ablation = Literal["mean", "zero", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)
Masks = dict[str, NodeValues]  # per hook: which latents [pos, d_sae] and error terms [pos]


def empty_masks(saes: SAESet, n_pos: int) -> Masks:
    return source_masks([], saes, n_pos, list(saes))


def node_masks(nodes: list[Node], saes: SAESet, n_pos: int) -> Masks:
    """Masks of ``nodes`` (position None: every position); a hook without an SAE, a latent or
    position out of range is one line. Embedding nodes are not ablatable and are skipped."""
    for n in nodes:
        if n.is_embed:
            continue
        if n.hook not in saes:
            raise CircuitsError(f"node {n.hook}/{n.latent}: the SAE set has no SAE at {n.hook}")
        if n.position is not None and not 0 <= n.position < n_pos:
            raise CircuitsError(f"node {n.hook}/{n.latent}@{n.position}: position out of range (prompts have {n_pos})")
        if n.latent is not None and not 0 <= n.latent < saes[n.hook].cfg.d_sae:
            raise CircuitsError(f"node {n.hook}/{n.latent}: latent out of range (the SAE has {saes[n.hook].cfg.d_sae})")
    return source_masks(nodes, saes, n_pos, list(saes))


def complement(masks: Masks) -> Masks:
    return {h: m.complement() for h, m in masks.items()}


def check_graph(graph: nx.DiGraph, model: HookedTransformer, saes: SAESet) -> None:
    """A circuit file must come from this model and SAE set (hooks and widths)."""
    recorded = graph.graph.get("saes", {})
    for hook, width in recorded.items():
        if hook not in saes:
            raise CircuitsError(f"the circuit was found with an SAE at {hook}; this SAE set has none")
        if saes[hook].cfg.d_sae != width:
            raise CircuitsError(
                f"the circuit's SAE at {hook} has {width} latents; this set's has {saes[hook].cfg.d_sae}"
            )
    n_layers = graph.graph.get("model", {}).get("n_layers")
    if n_layers is not None and n_layers != model.cfg.n_layers:
        raise CircuitsError(f"the circuit is from a {n_layers}-layer model; this model has {model.cfg.n_layers}")


@torch.no_grad()
def reference_values(
    model: HookedTransformer, saes: SAESet, task: Task, how: Ablation, seed: int = 0
) -> dict[str, NodeValues]:
    """What ablated nodes are set to, per hook: zeros, the per-position mean over the task's
    clean prompts (``[pos, ...]``), or another example's clean values (``[batch, pos, ...]``;
    example i takes a fixed other example's)."""
    if how not in ABLATIONS:
        raise CircuitsError(f"unknown ablation {how!r}: use {', '.join(ABLATIONS)}")
    if how == "zero":
        return {h: NodeValues.zeros((task.n_pos,), saes[h].cfg.d_sae, saes[h].cfg.d_in) for h in saes}
    with spliced(model, saes) as nodes:
        model(task.clean)
    if how == "mean":
        return {h: nodes[h].map(lambda t: t.detach().mean(0)) for h in saes}
    perm = _derangement(task.n_examples, seed)
    return {h: nodes[h].map(lambda t: t.detach()[perm]) for h in saes}


def _derangement(n: int, seed: int) -> torch.Tensor:
    """A permutation with no fixed point (identity for n = 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = torch.empty(n, dtype=torch.long)
    perm[torch.tensor(order)] = torch.tensor(order[1:] + order[:1])
    return perm


@contextmanager
def ablated(model: HookedTransformer, saes: SAESet, masks: Masks, values: dict[str, NodeValues]) -> Iterator[None]:
    """Inside the block, forward passes of ``model`` run with the masked nodes replaced by
    ``values`` (from ``reference_values``); hooks are removed on exit, also on error."""
    edits = {
        h: (lambda v, m=m, ref=values[h]: v.where(m, ref)) for h, m in masks.items() if m.latents.any() or m.error.any()
    }
    with spliced(model, saes, hooks=list(edits), edits=edits):
        yield


@torch.no_grad()
def metric_with(
    model: HookedTransformer, saes: SAESet, task: Task, masks: Masks | None, values: dict[str, NodeValues]
) -> float:
    """Mean metric with ``masks`` ablated (None: the plain model)."""
    if masks is None:
        return task.metric_per_example(model(task.clean)).mean().item()
    with ablated(model, saes, masks, values):
        return task.metric_per_example(model(task.clean)).mean().item()


@dataclass
class Faithfulness:
    """m(M), m(empty), and F of a circuit and of its complement."""

    m_model: float
    m_empty: float
    m_circuit: float = math.nan
    m_complement: float = math.nan

    @property
    def faithfulness(self) -> float:
        return self.of(self.m_circuit)

    @property
    def completeness(self) -> float:
        return self.of(self.m_complement)

    def of(self, m: float) -> float:
        """F of a circuit whose ablated run has metric ``m``."""
        denom = self.m_model - self.m_empty
        if abs(denom) <= 1e-6 * max(abs(self.m_model), abs(self.m_empty), 1e-6):
            raise CircuitsError(
                f"faithfulness is undefined: the model's metric ({self.m_model:.4g}) equals the "
                f"metric with every node ablated ({self.m_empty:.4g})"
            )
        return (m - self.m_empty) / denom


class _Ablator:
    """One task, SAE set and ablation convention: reference values computed once, then the
    metric of any node set kept (everything else ablated) or removed."""

    def __init__(self, model: HookedTransformer, saes: SAESet, task: Task, how: Ablation, seed: int = 0):
        self.model, self.saes, self.task = model, saes, prepare(model, task)
        self.values = reference_values(model, saes, self.task, how, seed)
        self.n_pos = self.task.n_pos
        everything = complement(empty_masks(saes, self.n_pos))
        self.ref = Faithfulness(
            metric_with(model, saes, self.task, None, self.values),
            metric_with(model, saes, self.task, everything, self.values),
        )

    def metric_without(self, nodes: list[Node]) -> float:
        masks = node_masks(nodes, self.saes, self.n_pos)
        return metric_with(self.model, self.saes, self.task, masks, self.values)

    def metric_of(self, nodes: list[Node]) -> float:
        masks = complement(node_masks(nodes, self.saes, self.n_pos))
        return metric_with(self.model, self.saes, self.task, masks, self.values)

    def faithfulness(self, nodes: list[Node]) -> float:
        return self.ref.of(self.metric_of(nodes))


def faithfulness(
    model: HookedTransformer, saes: SAESet, task: Task, nodes: list[Node], how: Ablation = "mean", seed: int = 0
) -> Faithfulness:
    """Faithfulness and completeness of the circuit ``nodes`` on ``task``."""
    ab = _Ablator(model, saes, task, how, seed)
    return Faithfulness(ab.ref.m_model, ab.ref.m_empty, ab.metric_of(nodes), ab.metric_without(nodes))


def ranked_nodes(graph: nx.DiGraph) -> list[Node]:
    """A circuit's SAE nodes (latents and error terms; embeddings are not ablatable), largest
    |effect| first."""
    nodes = [(graph.nodes[n]["effect"], node) for n, node in nodes_of(graph).items() if not node.is_embed]
    nodes.sort(key=lambda en: -abs(en[0]))
    return [node for _, node in nodes]


def log_sizes(n: int, per_decade: int = 6) -> list[int]:
    """1 .. n, about ``per_decade`` sizes per factor of 10, always including n."""
    if n < 1:
        return []
    count = max(2, int(math.log10(max(n, 2)) * per_decade) + 1)
    return sorted({max(1, round(n ** (i / (count - 1)))) for i in range(count)} | {n})


def live_nodes(model: HookedTransformer, saes: SAESet, task: Task) -> list[Node]:
    """Latents active on some clean prompt at a position, and every error term: the pool a
    random baseline circuit is drawn from (an inactive latent ablated to its mean ~ 0 does
    nothing, so drawing from all latents would make the baseline trivially empty)."""
    with torch.no_grad(), spliced(model, saes) as nodes:
        model(task.clean)
    out: list[Node] = []
    for h in saes:
        out += [Node.at(h, p, i) for p, i in (nodes[h].latents != 0).any(0).nonzero().tolist()]
        out += [Node.at(h, p) for p in range(task.n_pos)]
    return out


def _counts(nodes: list[Node]) -> tuple[int, int]:
    """(feature nodes, error nodes)."""
    n_err = sum(1 for n in nodes if n.latent is None)
    return len(nodes) - n_err, n_err


@dataclass
class CurvePoint:
    """F of the top-ranked nodes of one size, and of random circuits of the same size."""

    n_nodes: int  # feature nodes
    n_error_nodes: int
    faithfulness: float
    random_faithfulness: float


@dataclass
class FaithfulnessCurve:
    """``faithfulness_curve``'s result: F over circuit sizes under one ablation convention,
    the whole list's F and completeness, CPR and CMD."""

    ablation: str
    m_model: float
    m_empty: float
    faithfulness: float
    completeness: float
    cpr: float
    cmd: float
    curve: list[CurvePoint]
    n_nodes: int
    n_error_nodes: int
    pruned: PrunedCircuit | None = field(default=None)

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.pruned is None:
            out.pop("pruned")
        return out


@dataclass
class PrunedCircuit:
    """The smallest top-|effect| prefix of a circuit that reaches a faithfulness target."""

    n_nodes: int
    n_error_nodes: int
    faithfulness: float
    reached_target: bool
    path: str = ""


def faithfulness_curve(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    ranked: list[Node],
    how: Ablation = "mean",
    n_random: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> FaithfulnessCurve:
    """F of the top-k ranked nodes for log-spaced k, with a random circuit of the same size
    (same numbers of latents and error nodes, drawn from ``live_nodes``) as a baseline;
    completeness of the whole ranked list; CPR = area under F, CMD = area under |1 - F|, over
    circuit size as a fraction of the ranked list (trapezoid rule, F(0) = 0)."""
    ab = _Ablator(model, saes, task, how, seed)
    pool = live_nodes(model, saes, ab.task)
    pool_lat = [n for n in pool if n.latent is not None]
    pool_err = [n for n in pool if n.latent is None]
    rng = random.Random(seed)
    curve = []
    for k in tqdm(log_sizes(len(ranked)), desc="faithfulness curve", disable=not progress):
        top = ranked[:k]
        n_lat, n_err = _counts(top)
        randoms = [
            ab.faithfulness(
                rng.sample(pool_lat, min(n_lat, len(pool_lat))) + rng.sample(pool_err, min(n_err, len(pool_err)))
            )
            for _ in range(n_random)
        ]
        curve.append(CurvePoint(n_lat, n_err, ab.faithfulness(top), sum(randoms) / len(randoms)))
    completeness = ab.ref.of(ab.metric_without(ranked))
    xs = [0.0] + [(c.n_nodes + c.n_error_nodes) / max(len(ranked), 1) for c in curve]
    fs = [0.0] + [c.faithfulness for c in curve]
    cpr = sum((xs[i + 1] - xs[i]) * (fs[i + 1] + fs[i]) / 2 for i in range(len(curve)))
    cmd = sum((xs[i + 1] - xs[i]) * (abs(1 - fs[i + 1]) + abs(1 - fs[i])) / 2 for i in range(len(curve)))
    return FaithfulnessCurve(
        how,
        ab.ref.m_model,
        ab.ref.m_empty,
        curve[-1].faithfulness if curve else 0.0,
        completeness,
        cpr,
        cmd,
        curve,
        *_counts(ranked),
    )


def smallest_faithful(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    ranked: list[Node],
    target: float = 0.9,
    how: Ablation = "mean",
    seed: int = 0,
) -> tuple[int, float]:
    """The smallest k whose top-k ranked nodes reach faithfulness ``target`` (searched over
    log-spaced sizes, then bisected between the last miss and the first hit), with its F;
    ``(len(ranked), F)`` of the whole list when it never does."""
    ab = _Ablator(model, saes, task, how, seed)
    cache: dict[int, float] = {}

    def f_of(k: int) -> float:
        if k not in cache:
            cache[k] = ab.faithfulness(ranked[:k])
        return cache[k]

    lo = 0
    for k in log_sizes(len(ranked)):
        if f_of(k) >= target:
            hi = k
            while hi - lo > 1:  # F(lo) < target <= F(hi)
                mid = (lo + hi) // 2
                if f_of(mid) >= target:
                    hi = mid
                else:
                    lo = mid
            return hi, f_of(hi)
        lo = k
    return len(ranked), f_of(len(ranked))


def prune_by_ablation(
    graph: nx.DiGraph,
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    target: float = 0.9,
    how: Ablation = "mean",
    seed: int = 0,
) -> tuple[nx.DiGraph, PrunedCircuit]:
    """The circuit cut to its smallest top-|effect| prefix reaching faithfulness ``target``
    (embeddings kept), and what that prefix achieves."""
    ranked = ranked_nodes(graph)
    k, f = smallest_faithful(model, saes, task, ranked, target, how, seed)
    keep = set(ranked[:k])
    kept = [n for n, node in nodes_of(graph).items() if node.is_embed or node in keep]
    small = graph.subgraph(kept + [METRIC]).copy()
    small.graph = {
        **graph.graph,
        "pruned_by_ablation": {"target": target, "faithfulness": f, "ablation": how, "nodes": k},
    }
    return small, PrunedCircuit(*_counts(ranked[:k]), f, f >= target)
