"""Circuits as data files for other tools: GraphML (Gephi, Cytoscape) and circuit-tracer's
frontend JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from circuits.files import write_atomic
from circuits.graph import METRIC

if TYPE_CHECKING:
    from circuits.cards import FeatureCard


def write_graphml(graph: nx.DiGraph, path: str | Path) -> Path:
    """GraphML for Gephi / Cytoscape: None becomes "" and nested values JSON text."""
    import json

    out = nx.DiGraph()
    for n, a in graph.nodes(data=True):
        out.add_node(n, **{k: _scalar(v) for k, v in a.items()})
    for u, v, a in graph.edges(data=True):
        out.add_edge(u, v, **{k: _scalar(x) for k, x in a.items()})
    out.graph.update(
        {k: _scalar(v) if not isinstance(v, (dict, list)) else json.dumps(v) for k, v in graph.graph.items()}
    )
    text = "\n".join(nx.generate_graphml(out))
    return write_atomic(Path(path), text)


def _scalar(v):
    import json

    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return v


def to_circuit_tracer(
    graph: nx.DiGraph,
    prompt_tokens: list[str] | None = None,
    cards: dict[tuple[str, int], FeatureCard] | None = None,
    slug: str | None = None,
) -> dict:
    """The graph in circuit-tracer's frontend schema (metadata / qParams / nodes / links).

    circuit-tracer has one transcoder per layer; here a layer has three SAEs, so a feature's
    index is offset by its submodule (attn 0, mlp 1, resid 2 times the widest SAE) and error
    nodes use feature -1, -2, -3 (attn, mlp, resid). The metric is a target "logit" node."""
    cards = cards or {}
    width = max(graph.graph.get("saes", {}).values(), default=0)
    n_layers = graph.graph.get("model", {}).get("n_layers", 0)
    offset = {"attn": 0, "mlp": 1, "resid": 2}
    labels = graph.graph.get("position_labels") or []
    ids, nodes = {}, []
    for n, a in graph.nodes(data=True):
        pos = a.get("position") or 0
        if n == METRIC:
            node = {
                "node_id": f"{n_layers + 1}_0_{len(labels) - 1 if labels else 0}",
                "feature": 0,
                "layer": str(n_layers + 1),
                "ctx_idx": len(labels) - 1 if labels else 0,
                "feature_type": "logit",
                "is_target_logit": True,
                "clerp": f"metric: {graph.graph.get('metric', '')}",
                "influence": a.get("effect"),
            }
        elif a.get("kind") == "embed":
            node = {
                "node_id": f"E_{pos}_{pos}",
                "feature": pos,
                "layer": "E",
                "ctx_idx": pos,
                "feature_type": "embedding",
                "clerp": f"embedding @{a['pos_label']}",
                "influence": a["effect"],
            }
        elif a.get("is_error"):
            f = -1 - offset[a["kind"]]
            node = {
                "node_id": f"{a['layer']}_{f}_{pos}",
                "feature": f,
                "layer": str(a["layer"]),
                "ctx_idx": pos,
                "feature_type": "mlp reconstruction error",
                "clerp": f"{a['hook']} error @{a['pos_label']}",
                "influence": a["effect"],
            }
        else:
            f = offset[a["kind"]] * width + a["latent"]
            card = cards.get((a["hook"], a["latent"]))
            node = {
                "node_id": f"{a['layer']}_{f}_{pos}",
                "feature": f,
                "layer": str(a["layer"]),
                "ctx_idx": pos,
                "feature_type": "cross layer transcoder",
                "influence": a["effect"],
                "activation": a.get("activation"),
                "clerp": f"{a['hook']}/{a['latent']}" + (f": {card.description}" if card else ""),
            }
        node.update({"token_prob": 0.0, "run_idx": 0, "reverse_ctx_idx": 0})
        node.setdefault("is_target_logit", False)
        node["jsNodeId"] = node["node_id"]
        ids[n] = node["node_id"]
        nodes.append(node)
    links = [{"source": ids[u], "target": ids[v], "weight": w} for u, v, w in graph.edges(data="weight")]
    tokens = prompt_tokens or labels
    return {
        "metadata": {
            "slug": slug or str(graph.graph.get("task", "circuit")),
            "scan": "sae-circuits",
            "transcoder_list": sorted(graph.graph.get("saes", {})),
            "prompt_tokens": tokens,
            "prompt": " ".join(tokens),
            "node_threshold": graph.graph.get("node_threshold_abs"),
            "schema_version": 1,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_circuit_tracer(
    graph: nx.DiGraph, path: str | Path, cards: dict[tuple[str, int], FeatureCard] | None = None
) -> Path:
    """``to_circuit_tracer(graph, cards=cards)`` written atomically as JSON to ``path``."""
    import json

    return write_atomic(Path(path), json.dumps(to_circuit_tracer(graph, cards=cards), indent=1))
