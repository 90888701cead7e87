"""Ablation: switch node sets off and measure the task metric; faithfulness and completeness.

Nodes are ``circuits.core.vocab.Node`` (position None: every position); node sets travel as
masks, one ``NodeValues`` of booleans per hook. Ablating a node replaces its value by
(the convention, ``Ablation``):

* ``mean`` — its mean over the task's clean prompts at that position;
* ``mean_corrupt`` — its mean over the corrupt prompts at that position (SFC's evaluation);
* ``counterfactual`` — its value on the example's own corrupt prompt (MIB's interchange
  intervention; ablating every node gives the corrupt run);
* ``zero``;
* ``resample`` — its value on another example's clean prompt.

All hooks are ablated in one forward pass, each computed from the already-ablated layers
before it; submodules of layers below ``start_layer`` are never ablated (SFC's
``start_layer``: early layers given for free). See docs/design.md, "Ablation".

Faithfulness F(C) = (m(C) - m(empty)) / (m(M) - m(empty)): m(M) the model, m(empty) every
node ablated, m(C) every node outside C ablated. Completeness is F of the complement
(everything but C kept); a complete circuit leaves ~0 behind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution.edges import source_masks
from circuits.attribution.nodes import prepare
from circuits.attribution.splice import decode, spliced
from circuits.circuit.config import ABLATIONS, Ablation
from circuits.circuit.graph import nodes_of
from circuits.circuit.record import AblationPruning, attach, record_of
from circuits.core.errors import CircuitsError
from circuits.core.values import NodeValues
from circuits.core.vocab import METRIC, Node, Submodule, on_flat
from sae.saeset import SAESet
from tasks.task import Task

Masks = dict[str, NodeValues]  # per hook: which latents [pos, d_sae] and error terms [pos]


def ablatable_hooks(saes: SAESet) -> list[str]:
    """The set's hooks whose nodes ablation may switch off: all but an SAE on the embeddings,
    which are the circuit's inputs (its latents and error are inputs too)."""
    return [h for h in saes if not Submodule.parse(h).is_embed]


def empty_masks(saes: SAESet, n_pos: int) -> Masks:
    return source_masks([], saes, n_pos, ablatable_hooks(saes))


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
    return source_masks(nodes, saes, n_pos, ablatable_hooks(saes))


def complement(masks: Masks) -> Masks:
    return {h: m.complement() for h, m in masks.items()}


def check_graph(graph: nx.DiGraph, model: HookedTransformer, saes: SAESet) -> None:
    """A circuit file must come from this model and SAE set (hooks and widths)."""
    record = record_of(graph)
    for hook, width in record.saes.items():
        if hook not in saes:
            raise CircuitsError(f"the circuit was found with an SAE at {hook}; this SAE set has none")
        if saes[hook].cfg.d_sae != width:
            raise CircuitsError(
                f"the circuit's SAE at {hook} has {width} latents; this set's has {saes[hook].cfg.d_sae}"
            )
    n_layers = record.model.n_layers
    if n_layers is not None and n_layers != model.cfg.n_layers:
        raise CircuitsError(f"the circuit is from a {n_layers}-layer model; this model has {model.cfg.n_layers}")


@torch.no_grad()
def reference_values(
    model: HookedTransformer, saes: SAESet, task: Task, how: Ablation, seed: int = 0
) -> dict[str, NodeValues]:
    """What ablated nodes are set to, per hook: zeros, a per-position mean over the task's
    clean or corrupt prompts (``[pos, ...]``), or per example (``[batch, pos, ...]``) its own
    corrupt values or a fixed other example's clean values."""
    check_ablation(how)
    if how == "zero":
        return {h: NodeValues.zeros((task.n_pos,), saes[h].cfg.d_sae, saes[h].cfg.d_in) for h in saes}
    with spliced(model, saes) as nodes:
        model(task.corrupt if how in ("mean_corrupt", "counterfactual") else task.clean)
    if how in ("mean", "mean_corrupt"):
        return {h: nodes[h].map(lambda t: t.detach().mean(0)) for h in saes}
    if how == "counterfactual":
        return {h: nodes[h].detach() for h in saes}
    perm = _derangement(task.n_examples, seed)
    return {h: nodes[h].map(lambda t: t.detach()[perm]) for h in saes}


def check_ablation(how: str) -> None:
    if how not in ABLATIONS:
        raise CircuitsError(f"unknown ablation {how!r}: use {', '.join(ABLATIONS)}")


def _derangement(n: int, seed: int) -> torch.Tensor:
    """A permutation with no fixed point (identity for n = 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = torch.empty(n, dtype=torch.long)
    perm[torch.tensor(order)] = torch.tensor(order[1:] + order[:1])
    return perm


def ablation_hook(
    sae, ref: NodeValues, ref_act: torch.Tensor, full: torch.Tensor, mixed: torch.Tensor, keep: NodeValues | None
):
    """The TransformerLens hook that ablates one submodule: positions ``full`` (``[pos]``
    booleans) replaced by the reference activation ``ref_act`` = D(ref) + ref error, positions ``mixed``
    encoded and each node moved to its reference value by 1 - ``keep`` (``keep`` at the mixed
    positions: booleans, or floats for a learned mask, whose gradient then flows), the rest
    left alone. Gradients flow through the encoder at mixed positions, so a mask upstream
    sees its effect through every kept node downstream."""
    full_at, mixed_at = full.nonzero().flatten(), mixed.nonzero().flatten()
    ref_mixed = ref.map(lambda t: t[..., mixed_at, :]) if len(mixed_at) else None

    @on_flat
    def hook(x: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens passes the HookPoint)
        out = x.clone()
        if len(full_at):
            out[:, full_at] = ref_act[..., full_at, :].to(x.dtype)
        if ref_mixed is not None:
            xm = x[:, mixed_at]
            f = sae.encode(xm)
            e = xm - sae.decode(f)
            if keep.latents.dtype == torch.bool:
                f = torch.where(keep.latents, f, ref_mixed.latents)
                e = torch.where(keep.error[..., None], e, ref_mixed.error)
            else:
                f = ref_mixed.latents + keep.latents * (f - ref_mixed.latents)
                e = ref_mixed.error + keep.error[..., None] * (e - ref_mixed.error)
            out[:, mixed_at] = sae.decode(f) + e
        return out

    return hook


@contextmanager
def ablated(
    model: HookedTransformer,
    saes: SAESet,
    masks: Masks,
    values: dict[str, NodeValues],
    acts: dict[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Inside the block, forward passes of ``model`` run with the masked nodes replaced by
    ``values`` (from ``reference_values``; ``acts``: their activations, computed when not
    given); hooks are removed on exit, also on error.
    Positions whose nodes are all ablated need no SAE (their activation becomes the
    reference activation), so site-level circuits cost plain forward passes."""
    saes.check_model(model)
    hooks = []
    for h, m in masks.items():
        full = m.latents.all(-1) & m.error
        mixed = (m.latents.any(-1) | m.error) & ~full
        if full.any() or mixed.any():
            keep = NodeValues(~m.latents[mixed], ~m.error[mixed])
            act = acts[h] if acts is not None else decode(saes[h], values[h])
            hooks.append((h, ablation_hook(saes[h], values[h], act, full, mixed, keep)))
    with model.hooks(fwd_hooks=hooks):
        yield


@torch.no_grad()
def metric_with(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    masks: Masks | None,
    values: dict[str, NodeValues],
    acts: dict[str, torch.Tensor] | None = None,
) -> float:
    """Mean metric with ``masks`` ablated (None: the plain model)."""
    if masks is None:
        return task.metric_per_example(model(task.clean)).mean().item()
    with ablated(model, saes, masks, values, acts):
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


class Ablator:
    """One task, SAE set and ablation convention: reference values computed once, then the
    metric of any node set kept (everything else ablated) or removed. Hooks of layers below
    ``start_layer`` are never ablated."""

    def __init__(
        self, model: HookedTransformer, saes: SAESet, task: Task, how: Ablation, seed: int = 0, start_layer: int = 0
    ):
        self.model, self.saes, self.task = model, saes, prepare(model, task)
        self.how, self.start_layer = how, start_layer
        self.values = reference_values(model, saes, self.task, how, seed)
        with torch.no_grad():
            self.acts = {h: decode(saes[h], v) for h, v in self.values.items()}
        self.n_pos = self.task.n_pos
        self.ref = Faithfulness(
            metric_with(model, saes, self.task, None, self.values), self.metric_removing(self.everything())
        )

    def everything(self) -> Masks:
        return complement(empty_masks(self.saes, self.n_pos))

    def ablatable(self, hook: str) -> bool:
        sub = Submodule.parse(hook)
        return not sub.is_embed and sub.layer >= self.start_layer

    def metric_removing(self, masks: Masks) -> float:
        """The metric with the nodes of ``masks`` ablated."""
        masks = {h: m for h, m in masks.items() if self.ablatable(h)}
        return metric_with(self.model, self.saes, self.task, masks, self.values, self.acts)

    def metric_keeping(self, masks: Masks) -> float:
        """The metric with every node outside ``masks`` ablated."""
        return self.metric_removing(complement(masks))

    def metric_without(self, nodes: list[Node]) -> float:
        return self.metric_removing(node_masks(nodes, self.saes, self.n_pos))

    def metric_of(self, nodes: list[Node]) -> float:
        return self.metric_keeping(node_masks(nodes, self.saes, self.n_pos))

    def faithfulness(self, nodes: list[Node]) -> float:
        return self.ref.of(self.metric_of(nodes))


def faithfulness(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    nodes: list[Node],
    how: Ablation = "mean",
    seed: int = 0,
    start_layer: int = 0,
) -> Faithfulness:
    """Faithfulness and completeness of the circuit ``nodes`` on ``task``."""
    ab = Ablator(model, saes, task, how, seed, start_layer)
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
    for h in ablatable_hooks(saes):
        out += [Node.at(h, p, i) for p, i in (nodes[h].latents != 0).any(0).nonzero().tolist()]
        out += [Node.at(h, p) for p in range(task.n_pos)]
    return out


def node_counts(nodes: list[Node]) -> tuple[int, int]:
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
    start_layer: int = 0

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
    start_layer: int = 0,
    progress: bool = True,
) -> FaithfulnessCurve:
    """F of the top-k ranked nodes for log-spaced k, with a random circuit of the same size
    (same numbers of latents and error nodes, drawn from ``live_nodes``) as a baseline;
    completeness of the whole ranked list; CPR = area under F, CMD = area under |1 - F|, over
    circuit size as a fraction of the ranked list (trapezoid rule, F(0) = 0)."""
    ab = Ablator(model, saes, task, how, seed, start_layer)
    pool = [n for n in live_nodes(model, saes, ab.task) if ab.ablatable(n.hook)]
    pool_lat = [n for n in pool if n.latent is not None]
    pool_err = [n for n in pool if n.latent is None]
    rng = random.Random(seed)
    curve = []
    for k in tqdm(log_sizes(len(ranked)), desc="faithfulness curve", disable=not progress):
        top = ranked[:k]
        n_lat, n_err = node_counts(top)
        randoms = [
            ab.faithfulness(
                rng.sample(pool_lat, min(n_lat, len(pool_lat))) + rng.sample(pool_err, min(n_err, len(pool_err)))
            )
            for _ in range(n_random)
        ]
        curve.append(CurvePoint(n_lat, n_err, ab.faithfulness(top), sum(randoms) / len(randoms)))
    completeness = ab.ref.of(ab.metric_without(ranked))
    cpr, cmd = areas([c.n_nodes + c.n_error_nodes for c in curve], [c.faithfulness for c in curve], len(ranked))
    return FaithfulnessCurve(
        how,
        ab.ref.m_model,
        ab.ref.m_empty,
        curve[-1].faithfulness if curve else 0.0,
        completeness,
        cpr,
        cmd,
        curve,
        *node_counts(ranked),
        start_layer=start_layer,
    )


def areas(sizes: list[int], fs: list[float], total: int) -> tuple[float, float]:
    """MIB's CPR (area under F) and CMD (area under |1 - F|) over circuit size as a fraction
    of ``total`` (trapezoid rule from F(0) = 0)."""
    xs = [0.0] + [k / max(total, 1) for k in sizes]
    fs = [0.0] + list(fs)
    cpr = sum((xs[i + 1] - xs[i]) * (fs[i + 1] + fs[i]) / 2 for i in range(len(sizes)))
    cmd = sum((xs[i + 1] - xs[i]) * (abs(1 - fs[i + 1]) + abs(1 - fs[i])) / 2 for i in range(len(sizes)))
    return cpr, cmd


def smallest_faithful(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    ranked: list[Node],
    target: float = 0.9,
    how: Ablation = "mean",
    seed: int = 0,
    start_layer: int = 0,
) -> tuple[int, float]:
    """The smallest k whose top-k ranked nodes reach faithfulness ``target`` (searched over
    log-spaced sizes, then bisected between the last miss and the first hit), with its F;
    ``(len(ranked), F)`` of the whole list when it never does."""
    ab = Ablator(model, saes, task, how, seed, start_layer)
    return smallest_prefix(len(ranked), lambda k: ab.faithfulness(ranked[:k]), target)


def smallest_prefix(n: int, f_of: Callable[[int], float], target: float) -> tuple[int, float]:
    """The smallest k in 1..n with ``f_of(k) >= target``, assuming F grows with k: searched
    over log-spaced sizes, then bisected between the last miss and the first hit; ``(n,
    f_of(n))`` when none does (and ``(0, 0.0)`` for n = 0)."""
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


def prune_by_ablation(
    graph: nx.DiGraph,
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    target: float = 0.9,
    how: Ablation = "mean",
    seed: int = 0,
    start_layer: int = 0,
) -> tuple[nx.DiGraph, PrunedCircuit]:
    """The circuit cut to its smallest top-|effect| prefix reaching faithfulness ``target``
    (embeddings kept), and what that prefix achieves."""
    ranked = ranked_nodes(graph)
    k, f = smallest_faithful(model, saes, task, ranked, target, how, seed, start_layer)
    keep = set(ranked[:k])
    kept = [n for n, node in nodes_of(graph).items() if node.is_embed or node in keep]
    small = graph.subgraph(kept + [METRIC]).copy()
    cut = AblationPruning(target=target, faithfulness=f, ablation=how, start_layer=start_layer, nodes=k)
    attach(small, replace(record_of(graph), pruned_by_ablation=cut))
    return small, PrunedCircuit(*node_counts(ranked[:k]), f, f >= target)
