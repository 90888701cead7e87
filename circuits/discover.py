"""Circuit discovery: node effects -> nodes above threshold -> edges between them -> graph.

Thresholds are fractions of the task's total effect |m(corrupt) - m(clean)|, so one default
fits logit differences, probabilities and log-probabilities alike; the graph records them in
metric units too. Templated tasks (all prompts one template, labelled positions) get one
node per latent and position; other tasks sum effects over positions (position ``*``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution import (
    EMBED,
    METHODS,
    NodeEffects,
    exact_effects,
    node_effects,
    prepare,
)
from circuits.edges import edges_into, parse_hook, upstream_hooks
from circuits.errors import CircuitsError
from circuits.graph import METRIC, node_attrs, node_id, prune
from circuits.parallel import all_reduce, all_reduce_floats, batch_starts, is_main
from circuits.splice import spliced
from sae.saeset import SAESet
from tasks.task import Task


@dataclass
class DiscoverConfig:
    """How to find a circuit. Thresholds are fractions of |total effect|."""

    method: str = "ig"
    steps: int = 10
    node_threshold: float = 0.01
    edge_threshold: float = 0.002
    top_n: int | None = None
    batch_size: int = 32
    max_exact_nodes: int = 5000
    edges: bool = True  # False: nodes only (no edges, no path pruning), e.g. for long ranked lists

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DiscoverConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise CircuitsError(f"unknown discover setting(s): {', '.join(sorted(unknown))}")
        return cls(**data).validated()

    def validated(self) -> DiscoverConfig:
        if self.method not in METHODS:
            raise CircuitsError(f"unknown method {self.method!r}: use {', '.join(METHODS)}")
        for name in ("node_threshold", "edge_threshold"):
            if getattr(self, name) < 0:
                raise CircuitsError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.top_n is not None and self.top_n < 1:
            raise CircuitsError(f"top_n must be >= 1, got {self.top_n}")
        return self


@dataclass
class _Node:
    hook: str  # EMBED for the embeddings
    position: int | None  # None: summed over positions
    latent: int | None  # None: the error (or the embedding vector)
    effect: float


@torch.no_grad()
def task_metrics(model: HookedTransformer, task: Task, batch_size: int = 64) -> tuple[float, float]:
    """Mean clean and corrupt metric."""
    sums = [0.0, 0.0]
    for lo in batch_starts(task.n_examples, batch_size):
        part = task.subset(slice(lo, lo + batch_size))
        sums[0] += part.metric_per_example(model(part.clean)).sum().item()
        sums[1] += part.metric_per_example(model(part.corrupt)).sum().item()
    sums = all_reduce_floats(sums)
    for name, value in zip(("clean", "corrupt"), sums):
        if not math.isfinite(value):
            raise CircuitsError(f"task {task.name}: the {name} metric is not finite ({value})")
    return sums[0] / task.n_examples, sums[1] / task.n_examples


def discover(model: HookedTransformer, saes: SAESet, task: Task, cfg: DiscoverConfig | None = None,
             progress: bool = True) -> nx.DiGraph:
    """The feature circuit of ``task``: nodes whose |effect| passes the node threshold, the
    direct-effect edges between them, pruned to what reaches the metric."""
    cfg = (cfg or DiscoverConfig()).validated()
    _check_hooks(saes, model)
    task = prepare(model, task)
    clean_m, corrupt_m = task_metrics(model, task)
    total = corrupt_m - clean_m
    if abs(total) <= 1e-3 * max(abs(clean_m), abs(corrupt_m), 1e-6):
        warnings.warn(f"task {task.name}: clean and corrupt metric are equal ({clean_m:.4g} vs "
                      f"{corrupt_m:.4g}): there is nothing to explain", stacklevel=2)
    per_position = task.position_labels is not None
    labels = list(task.position_labels) if per_position else None

    if cfg.method == "exact":
        effects = _exact_node_effects(model, saes, task, cfg.max_exact_nodes)
    else:
        effects = node_effects(model, saes, task, cfg.method, cfg.steps, cfg.batch_size, progress)
    candidates = _candidates(effects, per_position)
    node_cut = cfg.node_threshold * abs(total)
    chosen = sorted((n for n in candidates if abs(n.effect) >= node_cut and n.effect != 0),
                    key=lambda n: -abs(n.effect))
    if cfg.top_n is not None:
        chosen = chosen[:cfg.top_n]

    activations = _mean_activations(model, saes, task, cfg.batch_size)
    graph = nx.DiGraph()
    ids = {}
    for n in chosen:
        label = "*" if n.position is None else labels[n.position]
        hook = None if n.hook == EMBED else n.hook
        ids[(n.hook, n.position, n.latent)] = nid = node_id(hook, n.latent, label)
        graph.add_node(nid, **node_attrs(hook, n.latent, n.position, label, n.effect,
                                         _activation(activations, n)))
    graph.add_node(METRIC, hook=None, layer=model.cfg.n_layers, kind="metric", latent=None,
                   is_error=False, position=None, pos_label="", effect=total, activation=clean_m)

    edge_cut = cfg.edge_threshold * abs(total)
    by_hook: dict[str, list[_Node]] = {}
    for n in chosen:
        if n.hook != EMBED:
            by_hook.setdefault(n.hook, []).append(n)
    last_resid = max((h for h in saes if h.endswith("hook_resid_post")), key=lambda h: parse_hook(h)[0])
    for hook in tqdm(sorted(by_hook, key=_order) if cfg.edges else [], desc="edges",
                     disable=not (progress and is_main())):
        for (u_key, d_key), w in _edges(model, saes, task, hook, by_hook[hook], chosen, per_position,
                                        cfg).items():
            if u_key in ids and abs(w) >= edge_cut and w != 0:
                graph.add_edge(ids[u_key], ids[d_key], weight=w)
    for n in by_hook.get(last_resid, []):
        graph.add_edge(ids[(n.hook, n.position, n.latent)], METRIC, weight=n.effect)

    graph.graph.update({
        "task": task.name, "metric": task.metric, "n_examples": task.n_examples,
        "clean_metric": clean_m, "corrupt_metric": corrupt_m, "total_effect": total,
        "position_labels": labels, "per_position": per_position,
        "model": {"n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
                  "d_vocab": model.cfg.d_vocab, "name": model.cfg.model_name},
        "saes": {h: int(saes[h].cfg.d_sae) for h in saes},
        "discover": cfg.to_dict(), "node_threshold_abs": node_cut, "edge_threshold_abs": edge_cut,
        "n_candidate_nodes": sum(1 for n in candidates if n.effect != 0),
    })
    return prune(graph, require_path=cfg.edges)


def _check_hooks(saes: SAESet, model: HookedTransformer) -> None:
    """The set must be spliceable into ``model`` and hold the resid chain edges run along."""
    saes.check_model(model)
    for hook in saes:
        upstream_hooks(hook, saes)  # raises naming the missing hook
    if not any(h.endswith("hook_resid_post") for h in saes):
        raise CircuitsError("discover needs SAEs at blocks.L.hook_resid_post (the set has none)")


def _order(hook: str) -> tuple[int, int]:
    layer, kind = parse_hook(hook)
    return layer, ("hook_attn_out", "hook_mlp_out", "hook_resid_post").index(kind)


def _candidates(effects: NodeEffects, per_position: bool) -> list[_Node]:
    out = []
    for hook, errs in effects.errors.items():
        lat = effects.latents.get(hook)
        if per_position:
            out += [_Node(hook, p, None, float(v)) for p, v in enumerate(errs.tolist())]
            if lat is not None:
                nz = lat.nonzero().tolist()
                out += [_Node(hook, p, i, float(lat[p, i])) for p, i in nz]
        else:
            out.append(_Node(hook, None, None, float(errs.sum())))
            if lat is not None:
                summed = lat.sum(0)
                out += [_Node(hook, None, i, float(summed[i])) for i in summed.nonzero().flatten().tolist()]
    return out


@torch.no_grad()
def _mean_activations(model, saes: SAESet, task: Task, batch_size: int) -> dict[str, tuple]:
    """Per hook, mean clean latent activation ``[pos, d_sae]`` and mean error norm ``[pos]``."""
    sums = {h: (torch.zeros(task.n_pos, saes[h].cfg.d_sae), torch.zeros(task.n_pos)) for h in saes}
    sums[EMBED] = (None, torch.zeros(task.n_pos))
    for lo in batch_starts(task.n_examples, batch_size):
        part = task.subset(slice(lo, lo + batch_size))
        with spliced(model, saes) as nodes:
            _, cache = model.run_with_cache(part.clean, names_filter=[EMBED])
        for h in saes:
            sums[h][0].add_(nodes.latents[h].sum(0).cpu())
            sums[h][1].add_(nodes.errors[h].norm(dim=-1).sum(0).cpu())
        sums[EMBED][1].add_(cache[EMBED].norm(dim=-1).sum(0).cpu())
    all_reduce([t for pair in sums.values() for t in pair if t is not None])
    n = task.n_examples
    return {h: (None if f is None else f / n, e / n) for h, (f, e) in sums.items()}


def _activation(activations, n: _Node) -> float:
    f, e = activations[n.hook]
    values = e if n.latent is None else f[:, n.latent]
    return float(values.mean() if n.position is None else values[n.position])


def _edges(model, saes: SAESet, task: Task, hook: str, targets: list[_Node], chosen: list[_Node],
           per_position: bool, cfg: DiscoverConfig) -> dict[tuple, float]:
    """Edges into ``targets`` (nodes of ``hook``) from the chosen upstream nodes, keyed by
    ((hook, position, latent) upstream, same downstream). dm/dd is taken on the clean run
    for AtP circuits, averaged along d's IG path otherwise."""
    ups = upstream_hooks(hook, saes)
    sources = {}
    for u in ups:
        latent_mask = None if u == EMBED else torch.zeros(task.n_pos, saes[u].cfg.d_sae, dtype=torch.bool)
        error_mask = torch.zeros(task.n_pos, dtype=torch.bool)
        for n in chosen:
            if n.hook != u:
                continue
            where = slice(None) if n.position is None else n.position
            if n.latent is None:
                error_mask[where] = True
            else:
                latent_mask[where, n.latent] = True
        sources[u] = (latent_mask, error_mask)
    # summed over positions: a target is its latent at every position, added up afterwards
    expanded = [(n, p) for n in targets for p in ([n.position] if per_position else range(task.n_pos))]
    result = edges_into(model, saes, task, hook, [(p, n.latent) for n, p in expanded], sources,
                        batch_size=cfg.batch_size, method="atp" if cfg.method == "atp" else "ig",
                        steps=cfg.steps)
    out: dict[tuple, float] = {}
    for t, (n, _) in enumerate(expanded):
        d_key = (n.hook, n.position, n.latent)
        for u in ups:
            weights = _nonzero_weights(u, result.errors[u][t].unsqueeze(-1), per_position, error=True)
            if u in result.latents:
                weights += _nonzero_weights(u, result.latents[u][t], per_position, error=False)
            for u_key, w in weights:
                out[(u_key, d_key)] = out.get((u_key, d_key), 0.0) + w
    return out


def _nonzero_weights(u: str, mat: torch.Tensor, per_position: bool, error: bool) -> list[tuple[tuple, float]]:
    """((hook, position, latent), weight) for the non-zero entries of ``mat [pos, latents]``
    (one column for an error node), summed over positions unless ``per_position``."""
    if not per_position:
        mat = mat.sum(0, keepdim=True)
    nz = mat.nonzero()
    values = mat[nz[:, 0], nz[:, 1]].tolist()
    return [((u, p if per_position else None, None if error else i), w)
            for (p, i), w in zip(nz.tolist(), values)]


def _exact_node_effects(model, saes: SAESet, task: Task, max_nodes: int) -> NodeEffects:
    """Exact single-node patching for every node whose value differs between clean and
    corrupt (the others have no effect), one forward pass each."""
    with torch.no_grad():
        with spliced(model, saes) as clean:
            _, cache_c = model.run_with_cache(task.clean, names_filter=[EMBED])
        with spliced(model, saes) as corrupt:
            _, cache_p = model.run_with_cache(task.corrupt, names_filter=[EMBED])
    nodes = []
    for h in saes:
        moved = (corrupt.latents[h] != clean.latents[h]).any(0)  # [pos, d_sae]
        nodes += [(h, p, i) for p, i in moved.nonzero().tolist()]
        nodes += [(h, p, None) for p in range(task.n_pos)]
    nodes += [(EMBED, p, None) for p in (cache_p[EMBED] != cache_c[EMBED]).any(-1).any(0).nonzero().flatten().tolist()]
    if len(nodes) > max_nodes:
        raise CircuitsError(f"--method exact would patch {len(nodes)} nodes one at a time (limit "
                            f"{max_nodes}): use atp or ig, fewer hooks, or raise the limit")
    values = exact_effects(model, saes, task, nodes)
    latents = {h: torch.zeros(task.n_pos, saes[h].cfg.d_sae) for h in saes}
    errors = {h: torch.zeros(task.n_pos) for h in [*saes, EMBED]}
    for (h, p, i), v in zip(nodes, values.tolist()):
        if i is None:
            errors[h][p] = v
        else:
            latents[h][p, i] = v
    return NodeEffects(latents, errors, "exact", task.n_examples)


def _out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "out of memory" in text or "can't allocate memory" in text)


def discover_fitting(model: HookedTransformer, saes: SAESet, task: Task, cfg: DiscoverConfig,
                     progress: bool = True) -> nx.DiGraph:
    """``discover`` that halves the batch size while a batch does not fit in memory, saying
    so each time; one error line if even a single prompt pair does not fit."""
    batch = cfg.batch_size
    while True:
        try:
            return discover(model, saes, task, replace(cfg, batch_size=batch), progress)
        except (RuntimeError, MemoryError) as err:
            if not _out_of_memory(err):
                raise
            if batch == 1:
                raise CircuitsError(f"one prompt pair at a time does not fit in memory on "
                                    f"{model.cfg.device}: use a smaller model, fewer SAEs (--hooks) or "
                                    "--dtype bf16") from None
            warnings.warn(f"batch size {batch} does not fit in memory; retrying with {batch // 2}", stacklevel=2)
            batch //= 2
