"""Ablation: switch node sets off and measure the task metric; faithfulness and completeness.

A node is ``(hook, position, latent)``: a latent at a position, ``latent=None`` for the SAE
error term there, ``position=None`` for every position. Ablating a node replaces its value
by zero, by its mean over the task's clean prompts at that position (``mean``), or by its
value on another example's clean prompt (``resample``); all hooks are ablated in one forward
pass, each computed from the already-ablated layers before it (shared DESIGN.md section 5).

Faithfulness F(C) = (m(C) - m(empty)) / (m(M) - m(empty)): m(M) the model, m(empty) every
node ablated, m(C) every node outside C ablated. Completeness is F of the complement
(everything but C kept); a complete circuit leaves ~0 behind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution import prepare
from circuits.errors import CircuitsError
from circuits.graph import METRIC
from circuits.splice import spliced
from sae.saeset import SAESet
from tasks.task import Task

ABLATIONS = ("mean", "zero", "resample")
Node = tuple[str, "int | None", "int | None"]


@dataclass
class NodeMasks:
    """Per hook: which latents ``[pos, d_sae]`` and error terms ``[pos]`` a node set holds."""

    latents: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]

    @classmethod
    def empty(cls, saes: SAESet, n_pos: int) -> NodeMasks:
        return cls({h: torch.zeros(n_pos, saes[h].cfg.d_sae, dtype=torch.bool) for h in saes},
                   {h: torch.zeros(n_pos, dtype=torch.bool) for h in saes})

    @classmethod
    def from_nodes(cls, nodes: list[Node], saes: SAESet, n_pos: int) -> NodeMasks:
        """Masks of ``nodes``; a hook without an SAE or a latent out of range is an error."""
        masks = cls.empty(saes, n_pos)
        for hook, pos, latent in nodes:
            if hook not in saes:
                raise CircuitsError(f"node {hook}/{latent}: the SAE set has no SAE at {hook}")
            where = slice(None) if pos is None else pos
            if pos is not None and not 0 <= pos < n_pos:
                raise CircuitsError(f"node {hook}/{latent}@{pos}: position out of range (prompts have {n_pos})")
            if latent is None:
                masks.errors[hook][where] = True
            elif not 0 <= latent < saes[hook].cfg.d_sae:
                raise CircuitsError(f"node {hook}/{latent}: latent out of range (the SAE has "
                                    f"{saes[hook].cfg.d_sae})")
            else:
                masks.latents[hook][where, latent] = True
        return masks

    def complement(self) -> NodeMasks:
        return NodeMasks({h: ~m for h, m in self.latents.items()}, {h: ~m for h, m in self.errors.items()})

    def n_latents(self) -> int:
        return int(sum(m.sum() for m in self.latents.values()))

    def n_errors(self) -> int:
        return int(sum(m.sum() for m in self.errors.values()))


def graph_nodes(graph: nx.DiGraph) -> list[Node]:
    """The SAE nodes (latents and error terms) of a circuit graph; embeddings and the metric
    are not ablatable nodes."""
    return [(a["hook"], a["position"], a["latent"]) for n, a in graph.nodes(data=True)
            if n != METRIC and a.get("hook") is not None]


def check_graph(graph: nx.DiGraph, model: HookedTransformer, saes: SAESet) -> None:
    """A circuit file must come from this model and SAE set (hooks and widths)."""
    recorded = graph.graph.get("saes", {})
    for hook, width in recorded.items():
        if hook not in saes:
            raise CircuitsError(f"the circuit was found with an SAE at {hook}; this SAE set has none")
        if saes[hook].cfg.d_sae != width:
            raise CircuitsError(f"the circuit's SAE at {hook} has {width} latents; this set's has "
                                f"{saes[hook].cfg.d_sae}")
    n_layers = graph.graph.get("model", {}).get("n_layers")
    if n_layers is not None and n_layers != model.cfg.n_layers:
        raise CircuitsError(f"the circuit is from a {n_layers}-layer model; this model has {model.cfg.n_layers}")


@torch.no_grad()
def reference_values(model: HookedTransformer, saes: SAESet, task: Task, how: str,
                     seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What ablated nodes are set to, per hook ``(latents, errors)``: zeros, the per-position
    mean over the task's clean prompts (``[pos, ...]``), or another example's clean values
    (``[batch, pos, ...]``; example i takes a fixed other example's)."""
    if how not in ABLATIONS:
        raise CircuitsError(f"unknown ablation {how!r}: use {', '.join(ABLATIONS)}")
    if how == "zero":
        return {h: (torch.zeros(task.n_pos, saes[h].cfg.d_sae), torch.zeros(task.n_pos, saes[h].cfg.d_in))
                for h in saes}
    with spliced(model, saes) as nodes:
        model(task.clean)
    if how == "mean":
        return {h: (nodes.latents[h].mean(0), nodes.errors[h].mean(0)) for h in saes}
    perm = _derangement(task.n_examples, seed)
    return {h: (nodes.latents[h][perm], nodes.errors[h][perm]) for h in saes}


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
def ablated(model: HookedTransformer, saes: SAESet, masks: NodeMasks,
            values: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Inside the block, forward passes of ``model`` run with the masked nodes replaced by
    ``values`` (from ``reference_values``); hooks are removed on exit, also on error."""
    edits = {}
    for h in saes:
        lat, err = masks.latents[h], masks.errors[h]
        if lat.any() or err.any():
            edits[h] = _replace(lat, err, *values[h])
    with spliced(model, saes, hooks=list(edits), edits=edits):
        yield


def _replace(lat_mask, err_mask, f_ref, e_ref):
    def edit(f, e):
        n_pos = f.shape[1]
        fr, er = f_ref[..., :n_pos, :], e_ref[..., :n_pos, :]
        return (torch.where(lat_mask[:n_pos].to(f.device), fr.to(f.device), f),
                torch.where(err_mask[:n_pos, None].to(e.device), er.to(e.device), e))
    return edit


@torch.no_grad()
def metric_with(model: HookedTransformer, saes: SAESet, task: Task, masks: NodeMasks | None,
                values) -> float:
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
    m_circuit: float
    m_complement: float

    @property
    def faithfulness(self) -> float:
        return _ratio(self.m_circuit, self)

    @property
    def completeness(self) -> float:
        return _ratio(self.m_complement, self)


def _ratio(m: float, f: Faithfulness) -> float:
    denom = f.m_model - f.m_empty
    if abs(denom) <= 1e-6 * max(abs(f.m_model), abs(f.m_empty), 1e-6):
        raise CircuitsError(f"faithfulness is undefined: the model's metric ({f.m_model:.4g}) equals the "
                            f"metric with every node ablated ({f.m_empty:.4g})")
    return (m - f.m_empty) / denom


def faithfulness(model: HookedTransformer, saes: SAESet, task: Task, nodes: list[Node],
                 how: str = "mean", seed: int = 0) -> Faithfulness:
    """Faithfulness and completeness of the circuit ``nodes`` on ``task``."""
    task = prepare(model, task)
    values = reference_values(model, saes, task, how, seed)
    masks = NodeMasks.from_nodes(nodes, saes, task.n_pos)
    full = NodeMasks.empty(saes, task.n_pos).complement()
    return Faithfulness(
        m_model=metric_with(model, saes, task, None, values),
        m_empty=metric_with(model, saes, task, full, values),
        m_circuit=metric_with(model, saes, task, masks.complement(), values),
        m_complement=metric_with(model, saes, task, masks, values),
    )


def ranked_nodes(graph: nx.DiGraph) -> list[Node]:
    """A circuit's SAE nodes, largest |effect| first."""
    nodes = [(n, a) for n, a in graph.nodes(data=True) if n != METRIC and a.get("hook") is not None]
    nodes.sort(key=lambda na: -abs(na[1]["effect"]))
    return [(a["hook"], a["position"], a["latent"]) for _, a in nodes]


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
        out += [(h, p, i) for p, i in (nodes.latents[h] != 0).any(0).nonzero().tolist()]
        out += [(h, p, None) for p in range(task.n_pos)]
    return out


def faithfulness_curve(model: HookedTransformer, saes: SAESet, task: Task, ranked: list[Node],
                       how: str = "mean", n_random: int = 3, seed: int = 0,
                       progress: bool = True) -> dict:
    """F of the top-k ranked nodes for log-spaced k, with a random circuit of the same size
    (same numbers of latents and error nodes, drawn from ``live_nodes``) as a baseline;
    completeness of the whole ranked list; CPR = area under F, CMD = area under |1 - F|, over
    circuit size as a fraction of the ranked list (trapezoid rule, F(0) = 0)."""
    task = prepare(model, task)
    values = reference_values(model, saes, task, how, seed)
    full = NodeMasks.empty(saes, task.n_pos).complement()
    m_model = metric_with(model, saes, task, None, values)
    m_empty = metric_with(model, saes, task, full, values)
    ref = Faithfulness(m_model, m_empty, math.nan, math.nan)
    pool = live_nodes(model, saes, task)
    pool_lat = [n for n in pool if n[2] is not None]
    pool_err = [n for n in pool if n[2] is None]
    rng = random.Random(seed)

    def f_of(nodes: list[Node]) -> float:
        masks = NodeMasks.from_nodes(nodes, saes, task.n_pos)
        return _ratio(metric_with(model, saes, task, masks.complement(), values), ref)

    curve = []
    for k in tqdm(log_sizes(len(ranked)), desc="faithfulness curve", disable=not progress):
        top = ranked[:k]
        n_err = sum(1 for n in top if n[2] is None)
        randoms = [f_of(rng.sample(pool_lat, min(k - n_err, len(pool_lat))) +
                        rng.sample(pool_err, min(n_err, len(pool_err)))) for _ in range(n_random)]
        curve.append({"n_nodes": k - n_err, "n_error_nodes": n_err, "faithfulness": f_of(top),
                      "random_faithfulness": sum(randoms) / len(randoms)})
    masks = NodeMasks.from_nodes(ranked, saes, task.n_pos)
    completeness = _ratio(metric_with(model, saes, task, masks, values), ref)
    xs = [0.0] + [(c["n_nodes"] + c["n_error_nodes"]) / max(len(ranked), 1) for c in curve]
    fs = [0.0] + [c["faithfulness"] for c in curve]
    cpr = sum((xs[i + 1] - xs[i]) * (fs[i + 1] + fs[i]) / 2 for i in range(len(curve)))
    cmd = sum((xs[i + 1] - xs[i]) * (abs(1 - fs[i + 1]) + abs(1 - fs[i])) / 2 for i in range(len(curve)))
    return {"ablation": how, "m_model": m_model, "m_empty": m_empty,
            "faithfulness": curve[-1]["faithfulness"] if curve else 0.0,
            "completeness": completeness, "cpr": cpr, "cmd": cmd, "curve": curve,
            "n_nodes": sum(1 for n in ranked if n[2] is not None),
            "n_error_nodes": sum(1 for n in ranked if n[2] is None)}


def smallest_faithful(model: HookedTransformer, saes: SAESet, task: Task, ranked: list[Node],
                      target: float = 0.9, how: str = "mean", seed: int = 0) -> tuple[int, float]:
    """The smallest k whose top-k ranked nodes reach faithfulness ``target`` (searched over
    log-spaced sizes, then bisected between the last miss and the first hit), with its F;
    ``(len(ranked), F)`` of the whole list when it never does."""
    task = prepare(model, task)
    values = reference_values(model, saes, task, how, seed)
    full = NodeMasks.empty(saes, task.n_pos).complement()
    ref = Faithfulness(metric_with(model, saes, task, None, values),
                       metric_with(model, saes, task, full, values), math.nan, math.nan)
    cache: dict[int, float] = {}

    def f_of(k: int) -> float:
        if k not in cache:
            masks = NodeMasks.from_nodes(ranked[:k], saes, task.n_pos)
            cache[k] = _ratio(metric_with(model, saes, task, masks.complement(), values), ref)
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
