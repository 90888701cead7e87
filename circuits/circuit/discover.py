"""Circuit discovery: two streamed passes over the prompts, then the graph.

Pass 1 (``attribution.first_pass``), per batch: the clean and corrupt metrics, the metric's
activation gradients (clean, or along each submodule's IG path), every node's effect (AtP or
IG) and mean activation; the gradients are written to a temporary folder. The nodes whose
|effect| passes the node threshold are chosen. Pass 2 (``second_pass``), per batch: one
clean and one corrupt plain run, that batch's gradients read back, and the edges into every
chosen node of every submodule.

The trade-off: memory holds one batch and running sums, so it is flat in the number of
prompts, at the price of running each batch twice (the choice of nodes needs every batch's
effects before any edge is computed) and of a few bytes of disk per prompt pair
(4 x positions x d_model per hook: keeping pass 1's gradients in memory would make it grow
with the prompts, recomputing them — IG's steps x submodules paths — would double the cost).

Thresholds are fractions of the task's total effect |m(corrupt) - m(clean)|, so one default
fits logit differences, probabilities and log-probabilities alike; the graph records them in
metric units too. Templated tasks (all prompts one template, labelled positions) get one
node per latent and position; other tasks sum effects over positions (position ``*``).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution.edges import batch_edges, source_masks, upstream_hooks
from circuits.attribution.nodes import (
    NodeEffects,
    batch_grads,
    exact_effects,
    first_pass,
    node_grads,
    prepare,
    run_batch,
)
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.families import Detection, find_families
from circuits.circuit.graph import nodes_of, prune, site_graph
from circuits.circuit.hierarchy import HierarchicalCircuit, find_hierarchy
from circuits.circuit.record import CircuitRecord, ExampleRecord, HierarchyRecord, LevelRecord, ModelRecord, attach
from circuits.core.errors import CircuitsError
from circuits.core.parallel import all_reduce, batch_starts, is_main
from circuits.core.values import NodeValues, add_into, flat
from circuits.core.vocab import EMBED_HOOK, METRIC, Node, Site, in_forward_order, metric_inputs
from sae.saeset import SAESet
from tasks.task import Task


def discover(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    cfg: DiscoverConfig | None = None,
    progress: bool = True,
    held_out: Task | None = None,
    **settings,
) -> nx.DiGraph:
    """The feature circuit of ``task``: nodes whose |effect| passes the node threshold, the
    direct-effect edges between them, pruned to what reaches the metric. With a target
    faithfulness, the nodes are instead a hierarchical circuit (``circuits.circuit.hierarchy``:
    sites, then features inside them) validated on the ``held_out`` prompts, recorded in
    its record's ``hierarchy`` (``circuits.circuit.record``). ``settings`` are `DiscoverConfig`
    fields that replace ``cfg``'s (``discover(model, saes, task, method="atp")``)."""
    cfg = replace(cfg or DiscoverConfig(), **settings)
    _check_hooks(saes, model)
    if cfg.target_faithfulness is not None and held_out is None:
        raise CircuitsError("a target faithfulness needs held-out prompts to validate on")
    task = prepare(model, task)
    with tempfile.TemporaryDirectory(prefix="sae-circuits-grads-") as grads:
        return _discover(model, saes, task, cfg, progress, Path(grads), held_out)


def _discover(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    cfg: DiscoverConfig,
    progress: bool,
    grads: Path,
    held_out: Task | None = None,
) -> nx.DiGraph:
    start = time.perf_counter()
    stats = first_pass(
        model,
        saes,
        task,
        None if cfg.method == "exact" else cfg.method,
        cfg.steps,
        cfg.batch_size,
        progress,
        keep_grads=grads,
    )
    times = {"attribution (pass 1)": time.perf_counter() - start}
    clean_m, corrupt_m = stats.clean_metric, stats.corrupt_metric
    total = corrupt_m - clean_m
    if abs(total) <= 1e-3 * max(abs(clean_m), abs(corrupt_m), 1e-6):
        warnings.warn(
            f"task {task.name}: clean and corrupt metric are equal ({clean_m:.4g} vs "
            f"{corrupt_m:.4g}): there is nothing to explain",
            stacklevel=2,
        )
    labels = list(task.position_labels) if task.position_labels is not None else None
    effects = _exact_node_effects(model, saes, task, cfg.max_exact_nodes) if cfg.method == "exact" else stats.effects
    node_cut = cfg.node_threshold * abs(total)
    chosen, n_candidates = _chosen(effects, labels, node_cut, cfg.top_n)
    hierarchy = None
    if cfg.target_faithfulness is not None:
        hierarchy = find_hierarchy(model, saes, task, held_out, effects, cfg.hierarchy(), cfg.mask(), progress)
        embeds = {n: e for n, e in chosen.items() if n.is_embed}  # the inputs, by the node threshold
        chosen = embeds | {n: _effect(effects, n) for n in hierarchy.features}

    graph = nx.DiGraph()
    for n, effect in chosen.items():
        graph.add_node(n.id, **n.attrs(effect, _activation(stats.activations, n)))
    graph.add_node(
        METRIC,
        hook=None,
        layer=model.cfg.n_layers,
        kind="metric",
        latent=None,
        is_error=False,
        position=None,
        pos_label="",
        effect=total,
        activation=clean_m,
    )
    edge_cut = cfg.edge_threshold * abs(total)
    if cfg.edges:
        start = time.perf_counter()
        ids = {n: n.id for n in chosen}  # nodes compare by site and latent, not by label
        for (u, d), w in second_pass(model, saes, task, list(chosen), cfg, progress, grads).items():
            if u in chosen and abs(w) >= edge_cut and w != 0:
                graph.add_edge(ids[u], ids[d], weight=w)
        times["edges (pass 2)"] = time.perf_counter() - start
    # The metric's direct inputs: the last residual-stream submodule and the outputs that join
    # the stream after it. A node's edge into the metric is its effect: exactly its direct
    # effect when no SAE'd submodule lies between it and the metric.
    last = {s.hook for s in metric_inputs(saes, model.cfg.n_layers, model.cfg.parallel_attn_mlp)}
    for n, effect in chosen.items():
        if n.hook in last:
            graph.add_edge(n.id, METRIC, weight=effect)

    steps = {k: v for k, v in times.items() if k != "edges (pass 2)"} | (hierarchy.times if hierarchy else {})
    record = CircuitRecord(
        task=task.name,
        metric=task.metric,
        n_examples=task.n_examples,
        clean_metric=clean_m,
        corrupt_metric=corrupt_m,
        total_effect=total,
        position_labels=labels,
        model=ModelRecord(model.cfg.model_name, model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab),
        saes={h: int(saes[h].cfg.d_sae) for h in saes},
        discover=cfg.to_dict(),
        node_threshold_abs=node_cut,
        edge_threshold_abs=edge_cut,
        n_candidate_nodes=n_candidates,
        example=example_record(model, task),
        times=steps | {k: v for k, v in times.items() if k == "edges (pass 2)"},
    )
    attach(graph, record)
    if hierarchy is None:
        return prune(graph, require_path=cfg.edges)
    # every validated feature stays; inputs only where they feed one
    graph.remove_nodes_from([n for n, node in nodes_of(graph).items() if node.is_embed and not graph.out_degree(n)])
    h = _hierarchy_record(hierarchy)
    sites = site_graph(attach(graph, replace(record, hierarchy=h)))  # the skeleton's sites too
    h = replace(h, site_edges=[(u, v, w) for u, v, w in sites.edges(data="weight")])
    if cfg.families and hierarchy.sites:
        h, seconds = _with_families(graph, h, model, saes, task, held_out, hierarchy, effects, cfg)
        record = replace(record, times=record.times | {"families": seconds})
    return attach(graph, replace(record, hierarchy=h))


def _with_families(
    graph: nx.DiGraph,
    h: HierarchyRecord,
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    held_out: Task,
    hierarchy: HierarchicalCircuit,
    node_effects: NodeEffects,
    cfg: DiscoverConfig,
) -> tuple[HierarchyRecord, float]:
    """The hierarchy record with the families (``circuits.circuit.families``) of the feature
    level's latents and of every other latent of its sites with an effect that tracks a task
    variable: a family holds all of a site's latents that track its variable, not only those
    the feature cut kept. Each feature of ``graph`` gets its family's id as ``family``."""
    ids = {node: n for n, node in nodes_of(graph).items()}
    features = {n: graph.nodes[ids[n]]["effect"] for n in hierarchy.features if n.latent is not None}
    effects = {
        Node(s, int(i)): float(row[i])
        for s in hierarchy.sites
        for row in [_latent_effects(node_effects, s)]
        for i in row.nonzero().flatten()
    } | features
    if not effects:
        return h, 0.0
    errors = [n for n in hierarchy.features if n.latent is None]
    found = find_families(model, saes, task, held_out, effects, errors, hierarchy.sites, cfg.hierarchy(), set(features))
    named = {}
    for f in found.families:
        for m in f.members:
            if m in graph:
                graph.nodes[m]["family"] = f.id
                named[m] = f.named
    level = LevelRecord.from_dict(found.level.to_dict(), where="family level")
    total = sum(abs(e) for e in features.values())
    share = sum(abs(e) for n, e in features.items() if named.get(ids[n])) / total if total else None
    detected = _detector_share(graph, ids, hierarchy.features, found.detection)
    return replace(
        h,
        families=found.families,
        family_level=level,
        interchange=found.interchange,
        feature_named_share=share,
        feature_detector_share=detected,
        family_scope=found.scope,
    ), found.seconds


def _detector_share(
    graph: nx.DiGraph, ids: dict[Node, str], features: list[Node], detection: Detection | None
) -> float | None:
    """Marks each feature latent with the value it best detects on the held-out prompts
    (``detects``, ``detects_f1``) and returns the share of the feature level's |effect|, error
    terms included, in latents that detect one value (``families.DETECTS``)."""
    if detection is None:
        return None
    for n in features:
        if n.latent is not None:
            graph.nodes[ids[n]]["detects"] = detection.value.get(n, "")
            graph.nodes[ids[n]]["detects_f1"] = round(detection.f1.get(n, 0.0), 4)
    detectors = detection.detectors()
    total = sum(abs(graph.nodes[ids[n]]["effect"]) for n in features)
    hit = sum(abs(graph.nodes[ids[n]]["effect"]) for n in features if n in detectors)
    return hit / total if total else None


def _hierarchy_record(hierarchy: HierarchicalCircuit) -> HierarchyRecord:
    """What the circuit records of a hierarchical circuit (its times join the record's)."""
    data = hierarchy.to_dict()
    data.pop("times")
    return HierarchyRecord.from_dict(data, where="hierarchical circuit")


@torch.no_grad()
def example_record(model: HookedTransformer, task: Task, top: int = 5) -> ExampleRecord:
    """The first prompt pair as text, for pictures and viewers to label positions with: its
    clean and corrupt tokens, the first answer and wrong-answer token with the model's
    probabilities for them, and the model's ``top`` next tokens at the last position."""
    n = int(task.lengths[0]) if task.lengths is not None else task.n_pos
    probs = model(task.clean[:1, :n].to(model.cfg.device))[0, -1].softmax(-1).float().cpu()
    answer, wrong = int(task.answer[0, 0]), int(task.wrong[0, 0])
    best = probs.topk(min(top, probs.numel()))

    def text(i: int) -> str:
        return model.tokenizer.decode([i])

    return ExampleRecord(
        prompt_tokens=[str(t) for t in model.to_str_tokens(task.clean[0, :n])],
        corrupt_tokens=[str(t) for t in model.to_str_tokens(task.corrupt[0, :n])],
        answer=text(answer),
        answer_prob=float(probs[answer]),
        wrong_answer=text(wrong) if wrong >= 0 else None,
        wrong_prob=float(probs[wrong]) if wrong >= 0 else None,
        top_outputs=[(text(i), float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)],
    )


def _latent_effects(effects: NodeEffects, site: Site) -> torch.Tensor:
    """The effects of a site's latents: ``[d_sae]`` (summed over positions for a site at all)."""
    latents = effects.values[site.hook].latents
    return latents.sum(0) if site.position is None else latents[site.position]


def _effect(effects: NodeEffects, n: Node) -> float:
    v = effects.values[n.hook]
    values = v.error if n.latent is None else v.latents[:, n.latent]
    return float(values.sum() if n.position is None else values[n.position])


def second_pass(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    chosen: list[Node],
    cfg: DiscoverConfig,
    progress: bool = True,
    grads: Path | None = None,
) -> dict[tuple[Node, Node], float]:
    """Edge weights into every chosen SAE node from the chosen nodes upstream of it, keyed by
    (upstream, downstream) node; mean over examples. dm/dd is taken on the clean run for AtP
    circuits and averaged along d's IG path otherwise: read from the first pass's files in
    ``grads`` where it wrote them, else computed. Nodes summed over positions get their edges
    at every position, added up."""
    task = prepare(model, task)
    targets: dict[str, list[Node]] = {}  # per hook, the positioned targets
    for n in chosen:
        if not n.is_embed:
            positions = [n.position] if n.position is not None else range(task.n_pos)
            targets.setdefault(n.hook, []).extend(Node.at(n.hook, p, n.latent) for p in positions)
    hooks = in_forward_order(targets)
    sources = {h: source_masks(chosen, saes, task.n_pos, upstream_hooks(h, saes, model)) for h in hooks}
    sums = {
        h: {u: NodeValues.zeros((len(targets[h]), task.n_pos), m.latents.shape[-1]) for u, m in sources[h].items()}
        for h in hooks
    }
    method = "atp" if cfg.method == "atp" else "ig"
    for lo in tqdm(
        batch_starts(task.n_examples, cfg.batch_size) if hooks else [],
        desc="edges",
        disable=not (progress and is_main()),
    ):
        run = run_batch(
            model, saes, task.subset(slice(lo, lo + cfg.batch_size)), hooks=[]
        )  # edges encode what they read
        saved = None if grads is None else grads / f"{lo}.pt"
        if saved is not None and saved.is_file():
            batch = torch.load(saved, weights_only=True, map_location=run.acts[EMBED_HOOK].device)
        else:
            batch = batch_grads(model, saes, run, method, cfg.steps, hooks=hooks)
        for h in hooks:
            add_into(sums[h], batch_edges(model, saes, run, h, targets[h], sources[h], node_grads(saes, h, batch[h])))
    all_reduce([t for h in hooks for t in flat(sums[h])])
    out: dict[tuple[Node, Node], float] = {}
    for h in hooks:
        for t, target in enumerate(targets[h]):
            d = target if task.position_labels is not None else _summed(target)
            for u, weights in sums[h].items():
                for src, w in _nonzero(u, weights.map(lambda x, t=t: x[t] / task.n_examples), task):
                    out[(src, d)] = out.get((src, d), 0.0) + w
    return out


def _summed(node: Node) -> Node:
    """The node summed over positions that ``node`` (at one position) belongs to."""
    return Node.at(node.hook, None, node.latent)


def _nonzero(hook: str, weights: NodeValues, task: Task) -> list[tuple[Node, float]]:
    """(upstream node, weight) for the non-zero entries of one target's weights from ``hook``
    (latents ``[pos, d_sae]``, error ``[pos]``), summed over positions for untemplated tasks."""
    out = []
    labels = list(task.position_labels) if task.position_labels is not None else None
    for mat, error in ((weights.error.unsqueeze(-1), True), (weights.latents, False)):
        if labels is None:
            mat = mat.sum(0, keepdim=True)
        nz = mat.nonzero()
        for (p, i), w in zip(nz.tolist(), mat[nz[:, 0], nz[:, 1]].tolist(), strict=False):
            out.append((Node.at(hook, p if labels is not None else None, None if error else i, labels), w))
    return out


def _check_hooks(saes: SAESet, model: HookedTransformer) -> None:
    """The set must be spliceable into ``model``: hooks it has and computes, widths that
    match, decoders circuits can splice (``SAESet.check_model``)."""
    if not len(saes):
        raise CircuitsError("the SAE set is empty")
    saes.check_model(model)


def _effects_by_node(effects: NodeEffects, labels: list[str] | None) -> dict[str, torch.Tensor]:
    """Per hook, every node's effect as one row: errors then latents of each position
    (``[pos * (1 + d_sae)]``) for templated tasks, else summed over positions."""
    out = {}
    for hook, v in effects.values.items():
        table = torch.cat([v.error.unsqueeze(-1), v.latents], dim=-1)  # [pos, 1 + d_sae]
        out[hook] = (table if labels is not None else table.sum(0, keepdim=True)).flatten()
    return out


def _node(hook: str, index: int, width: int, labels: list[str] | None) -> Node:
    """The node at ``index`` of ``_effects_by_node``'s row for ``hook``."""
    position, column = divmod(index, width)
    return Node.at(hook, position if labels is not None else None, None if column == 0 else column - 1, labels)


def _chosen(
    effects: NodeEffects, labels: list[str] | None, cut: float, top_n: int | None
) -> tuple[dict[Node, float], int]:
    """The nodes with |effect| >= ``cut`` (and not 0), largest first, at most ``top_n``; and
    the number of candidate nodes (non-zero effect)."""
    rows = _effects_by_node(effects, labels)
    picked, n_candidates = [], 0
    for hook, row in rows.items():
        n_candidates += int((row != 0).sum())
        keep = ((row.abs() >= cut) & (row != 0)).nonzero().flatten()
        width = effects.values[hook].latents.shape[-1] + 1
        picked += [(float(row[i]), hook, int(i), width) for i in keep]
    picked.sort(key=lambda p: -abs(p[0]))
    if top_n is not None:
        picked = picked[:top_n]
    return {_node(hook, i, width, labels): value for value, hook, i, width in picked}, n_candidates


def _activation(activations: dict[str, NodeValues], n: Node) -> float:
    v = activations[n.hook]
    values = v.error if n.latent is None else v.latents[:, n.latent]
    return float(values.mean() if n.position is None else values[n.position])


def _exact_node_effects(model, saes: SAESet, task: Task, max_nodes: int) -> NodeEffects:
    """Exact single-node patching for every node whose value differs between clean and
    corrupt (the others have no effect), one forward pass each."""
    run = run_batch(model, saes, task)
    nodes = []
    for h in saes:
        moved = (run.corrupt[h].latents != run.clean[h].latents).any(0)  # [pos, d_sae]
        nodes += [Node.at(h, p, i) for p, i in moved.nonzero().tolist()]
        nodes += [Node.at(h, p) for p in range(task.n_pos)]
    if EMBED_HOOK not in saes:  # the embedding vector, where it changes
        embed_moved = (run.corrupt[EMBED_HOOK].error != run.clean[EMBED_HOOK].error).any(-1).any(0)
        nodes += [Node.at(EMBED_HOOK, p) for p in embed_moved.nonzero().flatten().tolist()]
    if len(nodes) > max_nodes:
        raise CircuitsError(
            f"--method exact would patch {len(nodes)} nodes one at a time (limit "
            f"{max_nodes}): use atp or ig, fewer hooks, or raise the limit"
        )
    values = exact_effects(model, saes, task, nodes)
    shapes = {EMBED_HOOK: 0} | {h: saes[h].cfg.d_sae for h in saes}
    effects = {h: NodeValues.zeros((task.n_pos,), d) for h, d in shapes.items()}
    for n, v in zip(nodes, values.tolist(), strict=False):
        if n.latent is None:
            effects[n.hook].error[n.position] = v
        else:
            effects[n.hook].latents[n.position, n.latent] = v
    return NodeEffects(effects, "exact", task.n_examples)


def _out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def discover_fitting(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    cfg: DiscoverConfig,
    progress: bool = True,
    held_out: Task | None = None,
) -> nx.DiGraph:
    """``discover`` that halves the batch size while a batch does not fit in memory, saying
    so each time; one error line if even a single prompt pair does not fit."""
    batch = cfg.batch_size
    while True:
        try:
            return discover(model, saes, task, replace(cfg, batch_size=batch), progress, held_out)
        except (RuntimeError, MemoryError) as err:
            if not _out_of_memory(err):
                raise
            if batch == 1:
                raise CircuitsError(
                    f"one prompt pair at a time does not fit in memory on "
                    f"{model.cfg.device}: use a smaller model, fewer SAEs (--hooks) or "
                    "--dtype bf16"
                ) from None
            warnings.warn(f"batch size {batch} does not fit in memory; retrying with {batch // 2}", stacklevel=2)
            batch //= 2
