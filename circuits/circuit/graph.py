"""The circuit graph: a NetworkX DiGraph of SAE nodes, pruning, and its JSON file.

Node ids and attributes are ``circuits.core.vocab.Node``'s: ``blocks.2.hook_mlp_out/317@S2``
(latent 317 at the position labelled S2), ``blocks.2.hook_mlp_out/err@S2`` (the error term),
``embed@IO`` (the embeddings) and ``metric``. Positions are the task's labels for templated
prompts, ``p<i>`` otherwise, or ``*`` when effects are summed over positions. Edges point
downstream (towards ``metric``) and carry ``weight``: the change in the metric through that
edge when the upstream node is patched from clean to corrupt (negative = the behaviour
relies on it). The graph's metadata is its `CircuitRecord` (``circuits.circuit.record``:
``record_of(graph)``), which the file holds as the node-link data's ``graph`` object.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import networkx as nx

from circuits.circuit.record import CircuitRecord, HeldOut, Pruning, Sources, attach, record_of
from circuits.core.errors import CircuitsError
from circuits.core.files import read_json, write_atomic
from circuits.core.vocab import METRIC, Node, Site

FORMAT = "sae-circuits/graph-v1"


def nodes_of(graph: nx.DiGraph) -> dict[str, Node]:
    """Every node of a circuit graph but the metric, by id."""
    return {n: Node.from_attrs(a) for n, a in graph.nodes(data=True) if n != METRIC}


def node_effects(graph: nx.DiGraph) -> list[tuple[str, str, int | None, float]]:
    """Every SAE node of a circuit (embedding inputs left out) as ``(id, hook, latent or None
    for an error term, effect)``: what `sae.interpret.readability` reads."""
    return [(i, n.hook, n.latent, graph.nodes[i]["effect"]) for i, n in nodes_of(graph).items() if not n.is_embed]


def record_sources(
    graph: nx.DiGraph,
    task: str,
    n: int,
    seed: int = 0,
    model: str = "toy",
    saes: str = "toy",
    metric: str | None = None,
    hooks: str | None = None,
) -> None:
    """Record in ``graph`` what ``validate`` and ``edit`` need to rebuild its model, SAE set and
    prompts (by the names the command line takes)."""
    sources = Sources(task=task, n=n, seed=seed, model=model, saes=saes, metric=metric, hooks=hooks)
    attach(graph, replace(record_of(graph), sources=sources))


def record_held_out(graph: nx.DiGraph, held_out: HeldOut) -> None:
    """Record in a hierarchical circuit which prompts it was validated on."""
    record = record_of(graph)
    if record.hierarchy is None:
        raise CircuitsError("only a hierarchical circuit (found with a target faithfulness) has held-out prompts")
    attach(graph, replace(record, hierarchy=replace(record.hierarchy, held_out=held_out)))


def feature_nodes(graph: nx.DiGraph) -> list[str]:
    """Latent (feature) nodes: not errors, embeddings or the metric."""
    return [n for n, a in graph.nodes(data=True) if a.get("latent") is not None]


def error_nodes(graph: nx.DiGraph) -> list[str]:
    return [n for n, a in graph.nodes(data=True) if a.get("is_error")]


def prune(
    graph: nx.DiGraph,
    node_threshold: float | None = None,
    edge_threshold: float | None = None,
    top_n: int | None = None,
    cumulative: float | None = None,
    require_path: bool = True,
) -> nx.DiGraph:
    """A pruned copy of ``graph`` (thresholds in metric units, on |effect| and |weight|).

    Keeps nodes with |effect| >= ``node_threshold``; of those, the ``top_n`` largest by
    |effect|; and the smallest set, largest first, whose |effect| sums to ``cumulative`` of
    the total; drops edges with |weight| < ``edge_threshold``; then (``require_path``) drops
    every node with no path to the metric. The metric node always stays."""
    if cumulative is not None and not 0 < cumulative <= 1:
        raise CircuitsError(f"cumulative fraction must be in (0, 1], got {cumulative}")
    ranked = sorted((n for n in graph if n != METRIC), key=lambda n: -abs(graph.nodes[n]["effect"]))
    if node_threshold is not None:
        ranked = [n for n in ranked if abs(graph.nodes[n]["effect"]) >= node_threshold]
    if top_n is not None:
        ranked = ranked[:top_n]
    if cumulative is not None and ranked:
        total, running, kept = sum(abs(graph.nodes[n]["effect"]) for n in ranked), 0.0, []
        for n in ranked:
            if running >= cumulative * total:
                break
            kept.append(n)
            running += abs(graph.nodes[n]["effect"])
        ranked = kept
    out = graph.subgraph(ranked + [METRIC]).copy()
    if edge_threshold is not None:
        out.remove_edges_from([(u, v) for u, v, w in out.edges(data="weight") if abs(w) < edge_threshold])
    if require_path:
        reaching = nx.ancestors(out, METRIC) | {METRIC}
        out.remove_nodes_from([n for n in list(out) if n not in reaching])
    out.graph = dict(graph.graph)
    record = record_of(graph)
    given = dict(node_threshold=node_threshold, edge_threshold=edge_threshold, top_n=top_n, cumulative=cumulative)
    pruning = replace(record.pruning or Pruning(), **{k: v for k, v in given.items() if v is not None})
    return attach(out, replace(record, pruning=pruning))


def sites_of(graph: nx.DiGraph) -> list[Site]:
    """The circuit's sites in forward order, then position: a hierarchical circuit's skeleton
    (every site, kept node or not) and the sites of its nodes (embeddings among them)."""
    found = {s.id: s for s in _skeleton(graph)}
    for node in nodes_of(graph).values():
        found.setdefault(node.site.id, node.site)
    return sorted(found.values(), key=lambda s: (s.submodule.order, -1 if s.position is None else s.position))


def _skeleton(graph: nx.DiGraph) -> list[Site]:
    """A hierarchical circuit's sites (none for other circuits)."""
    h = record_of(graph).hierarchy
    return h.skeleton if h is not None else []


def site_graph(graph: nx.DiGraph) -> nx.DiGraph:
    """The circuit one level up: a node per site (a submodule at a position; id
    ``hook@label``, ``embed@label``) carrying the summed effect and the number of its
    circuit nodes, and a site -> site edge carrying the sum of the node edges between them
    (``metric`` stays). A hierarchical circuit's skeleton sites without a kept node are
    included, with no node and no effect. It carries the circuit's record."""
    out = attach(nx.DiGraph(), record_of(graph))
    site_of = {METRIC: METRIC}
    for n, node in nodes_of(graph).items():
        site = node.site
        site_of[n] = site.id
        if site.id not in out:
            out.add_node(site.id, hook=site.hook, position=site.position, pos_label=site.label, effect=0.0, nodes=0)
        out.nodes[site.id]["effect"] += graph.nodes[n]["effect"]
        out.nodes[site.id]["nodes"] += 1
    for site in _skeleton(graph):
        if site.id not in out:
            out.add_node(site.id, hook=site.hook, position=site.position, pos_label=site.label, effect=0.0, nodes=0)
    if METRIC in graph:
        out.add_node(METRIC, **graph.nodes[METRIC])
    for u, v, w in graph.edges(data="weight"):
        su, sv = site_of[u], site_of[v]
        if out.has_edge(su, sv):
            out[su][sv]["weight"] += w
        else:
            out.add_edge(su, sv, weight=w)
    return out


class OldCircuitFile(UserWarning):
    """A circuit file from before some of the record's fields existed (loaded, those empty)."""


def node_link(graph: nx.DiGraph) -> dict:
    """``graph`` as node-link data whose ``graph`` object is its record's ``to_dict()``."""
    return nx.node_link_data(graph, edges="edges") | {"graph": record_of(graph).to_dict()}


def save_graph(graph: nx.DiGraph, path: str | Path) -> Path:
    """Write ``graph`` as node-link JSON, atomically (a crash leaves the old file or none)."""
    data = {"format": FORMAT, **node_link(graph)}
    return write_atomic(path, json.dumps(data, indent=1))


def load_graph(path: str | Path) -> nx.DiGraph:
    """Read a circuit file written by ``save_graph``, its record included. A file from before
    some of the record's fields existed loads with those empty and one `OldCircuitFile`
    warning naming them; a bad field is a one-line CircuitsError naming it."""
    path = Path(path)
    data = read_json(path, "circuit file")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CircuitsError(f'circuit file {path}: not a sae-circuits graph (no "format": "{FORMAT}")')
    data.pop("format")
    meta = data.pop("graph", {})
    if not isinstance(meta, dict):
        raise CircuitsError(f"circuit file {path}: its graph record is not an object")
    record = CircuitRecord.from_dict(meta, where=f"circuit file {path}")
    try:
        graph = nx.node_link_graph(data, directed=True, edges="edges")
    except (KeyError, TypeError, nx.NetworkXError) as err:
        raise CircuitsError(f"circuit file {path}: malformed node-link data ({err})") from None
    attach(graph, record)
    missing = CircuitRecord.missing_fields(meta)
    if missing:
        warnings.warn(
            f"circuit file {path} is from an older sae-circuits: no {', '.join(missing)} (left empty)",
            OldCircuitFile,
            stacklevel=2,
        )
    for n, attrs in graph.nodes(data=True):
        if n != METRIC and "effect" not in attrs:
            raise CircuitsError(f"circuit file {path}: node {n!r} has no 'effect'")
    for u, v, attrs in graph.edges(data=True):
        if "weight" not in attrs:
            raise CircuitsError(f"circuit file {path}: edge {u!r} -> {v!r} has no 'weight'")
    return graph


load_circuit = load_graph  # the public API's name (``from circuits import load_circuit``)


def summary(graph: nx.DiGraph, n_top: int = 10) -> str:
    """Nodes and edges per layer and kind, and the strongest nodes, as text."""
    r = record_of(graph)
    nan = float("nan")

    def value(x: float | None) -> float:
        return nan if x is None else x

    lines = [
        f"task {r.task} ({r.metric}, {r.n_examples} pairs): clean {value(r.clean_metric):.3f}, corrupt "
        f"{value(r.corrupt_metric):.3f}, total effect {value(r.total_effect):.3f}",
        f"{len(feature_nodes(graph))} feature nodes, {len(error_nodes(graph))} error nodes, "
        f"{graph.number_of_edges()} edges",
        "",
        "| layer | kind | nodes | features | errors | edges in |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[str]] = {}
    for n, a in graph.nodes(data=True):
        if n != METRIC:
            groups.setdefault((a["layer"], a["kind"]), []).append(n)
    for (layer, kind), nodes in sorted(groups.items()):
        feats = sum(1 for n in nodes if graph.nodes[n]["latent"] is not None)
        errs = sum(1 for n in nodes if graph.nodes[n]["is_error"])
        lines.append(
            f"| {layer} | {kind} | {len(nodes)} | {feats} | {errs} | {sum(graph.in_degree(n) for n in nodes)} |"
        )
    top = sorted((n for n in graph if n != METRIC), key=lambda n: -abs(graph.nodes[n]["effect"]))[:n_top]
    lines += ["", "strongest nodes (effect on the metric when patched to corrupt):"]
    lines += [f"  {graph.nodes[n]['effect']:+.3f}  {n}" for n in top]
    return "\n".join(lines)
