"""How far to trust attribution: AtP and IG node effects, and edge weights, against exact
patching on the same task (what `circuits check-attribution` prints)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution.edges import edges_into, exact_edge_effects
from circuits.attribution.nodes import exact_effects, exact_submodule_effect, node_effects, prepare
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover
from circuits.circuit.graph import nodes_of
from circuits.core.vocab import METRIC, Node
from sae.saeset import SAESet
from tasks.task import Task


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson r of two 1-d tensors (nan when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else math.nan


@dataclass
class SubmoduleCheck:
    """AtP and IG against exact patching at one submodule."""

    pearson_atp: float
    pearson_ig: float
    total_ig: float
    total_atp: float
    total_exact: float
    n_latents: int


@dataclass
class KindCheck:
    """Pearson r of edge weights with exact patching for one kind of edge."""

    n: int
    pearson_ig: float
    pearson_atp: float


@dataclass
class EdgeSample:
    """One edge: its IG and AtP weights and exact two-node patching."""

    source: str
    target: str
    ig: float
    atp: float
    exact: float

    def to_dict(self) -> dict:
        return {"from": self.source, "to": self.target, "ig": self.ig, "atp": self.atp, "exact": self.exact}


@dataclass
class EdgeCheck:
    """Edge weights against exact two-node patching on one sample of edges."""

    n: int
    pearson_ig: float
    pearson_atp: float
    by_kind: dict[str, KindCheck]
    edges: list[EdgeSample]

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "pearson_ig": self.pearson_ig,
            "pearson_atp": self.pearson_atp,
            "by_kind": {k: asdict(v) for k, v in self.by_kind.items()},
            "edges": [e.to_dict() for e in self.edges],
        }


@dataclass
class AttributionCheck:
    """``check_attribution``'s result (``to_dict`` is what ``check-attribution --json`` prints)."""

    task: str
    n_examples: int
    submodules: dict[str, SubmoduleCheck] = field(default_factory=dict)
    edges: dict[str, EdgeCheck] | None = None

    def to_dict(self) -> dict:
        out = {
            "task": self.task,
            "n_examples": self.n_examples,
            "submodules": {h: asdict(v) for h, v in self.submodules.items()},
        }
        if self.edges is not None:
            out["edges"] = {k: v.to_dict() for k, v in self.edges.items()}
        return out


def check_attribution(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    n_top: int = 50,
    n_candidates: int = 100,
    steps: int = 10,
    n_edges: int = 0,
    progress: bool = True,
) -> AttributionCheck:
    """Per submodule: Pearson r of AtP and of IG with exact single-latent patching over the
    ``n_top`` latents (position, latent) with the largest |exact effect| among the
    ``n_candidates`` largest by |AtP| or |IG| (exact patching of every latent would take one
    forward pass each); the sum of IG effects over the submodule's nodes against patching
    the whole submodule. With ``n_edges``, the strongest edges of the AtP circuit against
    exact two-node patching (``exact_edge_effects``)."""
    task = prepare(model, task)
    atp = node_effects(model, saes, task, "atp", progress=progress)
    ig = node_effects(model, saes, task, "ig", steps=steps, progress=progress)
    out = AttributionCheck(task.name, task.n_examples)
    for hook in tqdm(list(saes), desc="exact patching", disable=not progress):
        a, g = atp.values[hook].latents.flatten(), ig.values[hook].latents.flatten()
        k = min(n_candidates, a.numel())
        cand = sorted(set(a.abs().topk(k).indices.tolist()) | set(g.abs().topk(k).indices.tolist()))
        d_sae = saes[hook].cfg.d_sae
        exact = exact_effects(model, saes, task, [Node.at(hook, c // d_sae, c % d_sae) for c in cand])
        top = exact.abs().topk(min(n_top, len(cand))).indices
        idx = torch.tensor(cand)[top]
        out.submodules[hook] = SubmoduleCheck(
            pearson(a[idx], exact[top]),
            pearson(g[idx], exact[top]),
            float(ig.values[hook].latents.sum() + ig.values[hook].error.sum()),
            float(atp.values[hook].latents.sum() + atp.values[hook].error.sum()),
            exact_submodule_effect(model, saes, task, hook),
            len(idx),
        )
    if n_edges:
        out.edges = check_edges(model, saes, task, n_edges, steps, progress)
    return out


def check_edges(
    model: HookedTransformer, saes: SAESet, task: Task, n_edges: int, steps: int = 10, progress: bool = True
) -> dict[str, EdgeCheck]:
    """Edge weights against exact two-node patching (``exact_edge_effects``) on two samples of
    the IG circuit's edges (default node threshold, no edge threshold): the ``n_edges``
    strongest of any kind, and the ``n_edges`` strongest feature-to-feature (latent -> latent)
    ones. Each edge is scored with dm/dd on the clean run (``atp``) and averaged along d's IG
    path (``ig``); Pearson r overall and by kind (into a latent, into an error node, from the
    embeddings)."""
    graph = discover(model, saes, task, DiscoverConfig(method="ig", steps=steps, edge_threshold=0.0), progress=False)

    nodes = nodes_of(graph)

    def latent(n: str) -> bool:
        return graph.nodes[n]["latent"] is not None

    ranked = sorted(((u, v, w) for u, v, w in graph.edges(data="weight") if v != METRIC), key=lambda e: -abs(e[2]))
    samples = {
        "strongest": ranked[:n_edges],
        "latent_to_latent": [e for e in ranked if latent(e[0]) and latent(e[1])][:n_edges],
    }
    result: dict[str, EdgeCheck] = {}
    for name, edges in tqdm(samples.items(), desc="exact edge patching", disable=not progress):
        pairs = [(nodes[u], nodes[v]) for u, v, _ in edges]
        exact = exact_edge_effects(model, saes, task, pairs)
        weights = {
            "ig": torch.tensor([w for *_, w in edges]),
            "atp": _edge_weights(model, saes, task, pairs, "atp", steps),
        }
        groups = {
            "into_latent": [latent(v) for _, v, _ in edges],
            "into_error": [graph.nodes[v]["is_error"] for _, v, _ in edges],
            "from_embed": [graph.nodes[u]["kind"] == "embed" for u, _, _ in edges],
        }
        by_kind = {}
        for kind, mask in groups.items():
            m = torch.tensor(mask, dtype=torch.bool)
            if 3 <= m.sum() < len(edges):
                by_kind[kind] = KindCheck(
                    int(m.sum()), pearson(weights["ig"][m], exact[m]), pearson(weights["atp"][m], exact[m])
                )
        samples_out = [
            EdgeSample(u, v, w, a, x)
            for (u, v, w), a, x in zip(edges, weights["atp"].tolist(), exact.tolist(), strict=False)
        ]
        result[name] = EdgeCheck(
            len(edges), pearson(weights["ig"], exact), pearson(weights["atp"], exact), by_kind, samples_out
        )
    return result


def _edge_weights(model, saes: SAESet, task: Task, pairs: list, method: str, steps: int) -> torch.Tensor:
    """The attribution weight of each (upstream, downstream) node pair, by ``edges_into``."""
    out = torch.zeros(len(pairs))
    by_hook: dict[str, list[int]] = {}
    for k, (_, d) in enumerate(pairs):
        by_hook.setdefault(d.hook, []).append(k)
    for hook, ks in by_hook.items():
        targets = list(dict.fromkeys(pairs[k][1] for k in ks))
        edges = edges_into(model, saes, task, hook, targets, method=method, steps=steps)
        for k in ks:
            u, d = pairs[k]
            w, t = edges.weights[u.hook], targets.index(d)
            out[k] = w.error[t, u.position] if u.latent is None else w.latents[t, u.position, u.latent]
    return out


def format_table(result: AttributionCheck) -> str:
    """Markdown table of a ``check_attribution`` result."""
    lines = [
        f"task {result.task}, {result.n_examples} prompt pairs; Pearson r over the top "
        "latents by |exact effect|; totals: sum over the submodule's nodes vs patching it whole",
        "",
        "| submodule | r AtP | r IG | total AtP | total IG | total exact |",
        "|---|---|---|---|---|---|",
    ]
    for hook, r in result.submodules.items():
        lines.append(
            f"| {hook} | {r.pearson_atp:.3f} | {r.pearson_ig:.3f} | {r.total_atp:.3f} | "
            f"{r.total_ig:.3f} | {r.total_exact:.3f} |"
        )
    for name, e in (result.edges or {}).items():
        lines += [
            "",
            f"edges ({name.replace('_', ' ')}, {e.n}) vs exact two-node patching: "
            f"r IG {e.pearson_ig:.3f}, r AtP {e.pearson_atp:.3f}",
        ]
        lines += [
            f"  {k.replace('_', ' ')} ({v.n}): r IG {v.pearson_ig:.3f}, r AtP {v.pearson_atp:.3f}"
            for k, v in e.by_kind.items()
        ]
    return "\n".join(lines)
