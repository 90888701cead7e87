"""Circuit pictures with graphviz: DOT text (layout, colours, legend) and PNG/SVG/PDF files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from circuits.errors import CircuitsError
from circuits.files import write_atomic
from circuits.graph import METRIC

if TYPE_CHECKING:
    from circuits.cards import FeatureCard

KIND_ORDER = {"embed": 0, "attn": 1, "mlp": 2, "resid": 3, "metric": 4}
FORMATS = ("png", "svg", "pdf")


def _dot_text(text: str):
    """Literal text for a DOT label: backslashes and "<...>" made inert (graphviz.escape) and
    "&" written as an entity, since dot reads HTML entities even in plain labels."""
    import graphviz

    return graphviz.escape(str(text).replace("&", "&amp;"))


def _short(attrs: dict) -> str:
    if attrs.get("kind") == "metric":
        return "metric"
    if attrs.get("kind") == "embed":
        return f"embed @{attrs['pos_label']}"
    what = "error" if attrs.get("is_error") else f"#{attrs['latent']}"
    return f"L{attrs['layer']} {attrs['kind']} {what} @{attrs['pos_label']}"


def _colour(effect: float, scale: float) -> str:
    """Blue for nodes the behaviour relies on (negative effect), red for nodes that work
    against it; stronger = more saturated."""
    t = min(abs(effect) / scale, 1.0) if scale > 0 else 0.0
    level = int(255 - 175 * t)
    return f"#{level:02x}{level:02x}ff" if effect < 0 else f"#ff{level:02x}{level:02x}"


def drawn_subgraph(graph: nx.DiGraph, max_nodes: int = 40) -> tuple[nx.DiGraph, int]:
    """The ``max_nodes`` strongest nodes (by |effect|) plus the metric, and how many were hidden."""
    others = sorted((n for n in graph if n != METRIC), key=lambda n: -abs(graph.nodes[n]["effect"]))
    keep = others[:max_nodes] + ([METRIC] if METRIC in graph else [])
    return graph.subgraph(keep).copy(), len(others) - len(keep) + (1 if METRIC in graph else 0)


def card_keys(graph: nx.DiGraph, max_nodes: int = 40) -> list[tuple[str, int]]:
    """The ``(hook, latent)`` keys of the latents drawn (see ``drawn_subgraph``): the feature
    cards a picture of ``max_nodes`` nodes needs."""
    sub, _ = drawn_subgraph(graph, max_nodes)
    return sorted({(a["hook"], a["latent"]) for _, a in sub.nodes(data=True) if a.get("latent") is not None})


def to_dot(
    graph: nx.DiGraph,
    max_nodes: int = 40,
    annotations: dict[str, str] | None = None,
    cards: dict[tuple[str, int], FeatureCard] | None = None,
):
    """A graphviz.Digraph of the strongest nodes: bottom (embeddings) to top (metric), one
    rank per layer and submodule, nodes ordered by position, colour = sign and strength of
    the effect, edge width = |weight|, error nodes as dashed boxes, and a legend. Labels are
    the node, the latent's description (``annotations[node_id]``, else its feature card) and
    the effect; every text is escaped for DOT."""
    import graphviz

    sub, hidden = drawn_subgraph(graph, max_nodes)
    annotations = annotations or {}
    cards = cards or {}
    # colour scale from the SAE nodes (embeddings, often far larger, saturate)
    scale = max(
        (abs(a["effect"]) for n, a in sub.nodes(data=True) if a.get("kind") in ("attn", "mlp", "resid")), default=1.0
    )
    wmax = max((abs(w) for *_, w in sub.edges(data="weight")), default=1.0)
    dot = graphviz.Digraph(
        "circuit",
        graph_attr={
            "rankdir": "BT",
            "newrank": "true",
            "nodesep": "0.25",
            "ranksep": "0.45",
            "fontname": "Helvetica",
            "label": _dot_text(_title(graph, sub, hidden)),
            "labelloc": "t",
            "fontsize": "14",
        },
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled", "shape": "box"},
        edge_attr={"arrowsize": "0.5"},
    )
    ranks: dict[tuple, list[str]] = {}
    for n, a in sub.nodes(data=True):
        ranks.setdefault((a.get("layer", 0), KIND_ORDER.get(a.get("kind"), 0)), []).append(n)
    ids = {n: f"n{i}" for i, n in enumerate(sub)}
    top_key, bottom_key = max(ranks), min(ranks)  # the metric's rank is the highest
    for key in sorted(ranks):
        with dot.subgraph(name=f"rank_{key[0]}_{key[1]}") as r:
            # the metric on top and the embeddings at the bottom, even when no drawn edge reaches them
            r.attr(rank="min" if key == bottom_key and key[1] == KIND_ORDER["embed"] else "same")
            for n in sorted(ranks[key], key=lambda n: sub.nodes[n].get("position") or 0):
                r.node(ids[n], **_node_style(n, sub.nodes[n], scale, annotations, cards))
    below = [k for k in ranks if k != top_key]
    if METRIC in sub and below:  # keep the metric on top even when no drawn edge reaches it
        for n in ranks[max(below)]:
            dot.edge(ids[n], ids[METRIC], style="invis")
    for u, v, w in sub.edges(data="weight"):
        dot.edge(
            ids[u],
            ids[v],
            penwidth=f"{0.6 + 4.4 * abs(w) / wmax:.2f}",
            color="#3060d0" if w < 0 else "#d04040",
            tooltip=_dot_text(f"{u} -> {v}: {w:+.3f}"),
        )
    _legend(dot)
    return dot


def _title(graph: nx.DiGraph, sub: nx.DiGraph, hidden: int) -> str:
    g = graph.graph
    head = (
        f"{g.get('task', 'circuit')} ({g.get('metric', '')}): total effect {g.get('total_effect', float('nan')):+.2f}"
    )
    if len(graph) <= 1:
        return head + " - the circuit is empty"
    return head + (f" - {len(sub) - 1} strongest nodes shown, {hidden} hidden" if hidden else "")


def _node_style(n: str, a: dict, scale: float, annotations: dict, cards: dict) -> dict:
    if n == METRIC:
        return {"label": "metric", "shape": "doubleoctagon", "fillcolor": "#f0e68c"}
    desc = annotations.get(n)
    if desc is None and a.get("latent") is not None and (a["hook"], a["latent"]) in cards:
        desc = cards[(a["hook"], a["latent"])].description
    lines = [_short(a)] + ([desc[:40]] if desc else []) + [f"{a['effect']:+.3f}"]
    style = {
        "label": "\n".join(_dot_text(x) for x in lines),
        "fillcolor": _colour(a["effect"], scale),
        "tooltip": _dot_text(n),
        "group": f"pos{a.get('position')}",
    }
    if a.get("is_error"):
        style.update(style="dashed,filled", shape="box", color="#606060")
    elif a.get("kind") == "embed":
        style.update(shape="invhouse")
    else:
        style.update(shape="box", style="rounded,filled")
    return style


def _legend(dot) -> None:
    with dot.subgraph(name="cluster_legend") as c:
        c.attr(label="legend", fontsize="10", color="#a0a0a0")
        c.node(
            "leg_rel",
            "feature the behaviour relies on\n(negative effect)",
            shape="box",
            style="rounded,filled",
            fillcolor=_colour(-1, 1),
        )
        c.node(
            "leg_opp",
            "feature working against it\n(positive effect)",
            shape="box",
            style="rounded,filled",
            fillcolor=_colour(1, 1),
        )
        c.node("leg_err", "SAE error term", shape="box", style="dashed,filled", fillcolor="#ffffff")
        c.node("leg_emb", "token embedding", shape="invhouse", style="filled", fillcolor="#ffffff")
        c.edge("leg_rel", "leg_opp", style="invis")
        c.edge("leg_err", "leg_emb", style="invis")


def draw_graph(
    graph: nx.DiGraph,
    stem: str | Path,
    formats: tuple[str, ...] = ("png", "svg"),
    max_nodes: int = 40,
    annotations: dict[str, str] | None = None,
    cards: dict[tuple[str, int], FeatureCard] | None = None,
) -> tuple[list[Path], str | None]:
    """Write ``stem.dot`` and ``stem.<format>`` for each format. Returns the files written and,
    when the ``dot`` binary is missing, a one-line message saying how to install it (the .dot
    file is still written)."""
    import shutil

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise CircuitsError(f"unknown image format {bad[0]!r}: use {', '.join(FORMATS)}")
    stem = Path(stem)
    dot = to_dot(graph, max_nodes, annotations, cards)
    written = [write_atomic(stem.with_suffix(".dot"), dot.source)]
    if shutil.which("dot") is None:
        return written, (
            "graphviz's `dot` is not installed, so no images were drawn (the .dot file was "
            "written): apt-get install graphviz, or brew install graphviz"
        )
    for fmt in formats:
        data = dot.pipe(format=fmt)
        written.append(write_atomic(stem.with_suffix(f".{fmt}"), data))
    return written, None
