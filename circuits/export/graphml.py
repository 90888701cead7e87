"""A circuit as GraphML, for Gephi and Cytoscape: every node and edge attribute (None as "",
nested values as JSON text), the circuit's record as graph attributes, a short ``label`` per
node and ``abs_effect`` / ``abs_weight`` for sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx

from circuits.circuit.graph import METRIC
from circuits.circuit.record import record_of
from circuits.core.files import write_atomic


def write_graphml(graph: nx.DiGraph, path: str | Path) -> Path:
    """GraphML for Gephi / Cytoscape: None becomes "" and nested values JSON text. Nodes also
    get a short ``label`` (Gephi shows it) and ``abs_effect``, edges ``abs_weight`` (for sizes)."""
    out = nx.DiGraph()
    for n, a in graph.nodes(data=True):
        extra = {"label": _short_label(n, a), "abs_effect": abs(finite(a.get("effect")))}
        out.add_node(n, **{k: _scalar(v) for k, v in (extra | a).items()})
    for u, v, a in graph.edges(data=True):
        extra = {"abs_weight": abs(finite(a.get("weight")))}
        out.add_edge(u, v, **{k: _scalar(x) for k, x in (extra | a).items()})
    out.graph.update({k: _scalar(v) for k, v in record_of(graph).to_dict().items()})
    text = "\n".join(nx.generate_graphml(out))
    return write_atomic(Path(path), text)


def _short_label(n: str, a: dict) -> str:
    """``L2 mlp 317 @S2``, ``L2 mlp err @S2``, ``embed @S2``, ``metric``."""
    if n == METRIC or a.get("kind") in (None, "metric"):
        return str(n)
    if a.get("kind") == "embed":
        return f"embed @{a.get('pos_label', '')}"
    what = "err" if a.get("is_error") else a.get("latent")
    return f"L{a.get('layer')} {a.get('kind')} {what} @{a.get('pos_label', '')}"


def _scalar(v):
    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return v


def finite(v) -> float:
    """A finite float (None, NaN and infinities count as 0)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0
