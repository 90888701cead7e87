"""The interactive circuit viewer inside ``report.html``: the circuit's sites on a grid (rows:
submodules from the embeddings up to the metric; columns: prompt positions, labelled with an
example prompt's tokens), click a site to expand its features (or, for a circuit with feature
families, its families: click one to expand its latents), click a feature or family for its card,
filters on |effect| and |edge weight|, the faithfulness curves beside it.

Python lays out the grid and gathers the data (``viewer_data``); ``viewer.js`` draws it with
cytoscape.js, vendored whole under ``circuits/export/vendor`` with its licence and inlined into the
page, so the report stays one file that works offline. Cytoscape because it draws compound
nodes (a site holding its features) natively, renders thousands of elements on a canvas,
has no dependencies, and is MIT-licensed and actively maintained; the grid positions are
ours (a ``preset`` layout) so the page shows the same story as the static picture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from circuits.circuit.graph import nodes_of, sites_of
from circuits.circuit.record import LEVELS, SITE_LEVELS, HierarchyRecord, record_of
from circuits.core.vocab import METRIC, Latent, Site, Submodule

if TYPE_CHECKING:
    from circuits.export.cards import FeatureCard

HERE = Path(__file__).parent
CYTOSCAPE_VERSION = "3.34.4"
CONTEXTS_PER_CARD = 5  # top contexts a card in the viewer shows


def _row_label(sub: Submodule) -> str:
    return "embeddings" if sub.is_embed else f"L{sub.layer} {sub.kind}"


def _columns(graph: nx.DiGraph, sites: list[Site]) -> tuple[list[dict], dict]:
    """One column per position that holds a site, labelled with the example prompt's token
    (when the graph records one) and the position's label (the template slot)."""
    record = record_of(graph)
    positions = sorted({s.position for s in sites}, key=lambda p: -1 if p is None else p)
    labels = {s.position: s.label for s in sites}
    columns = []
    for p in positions:
        columns.append({"position": p, "token": record.token(p), "slot": "all positions" if p is None else labels[p]})
    return columns, {p: i for i, p in enumerate(positions)}


def viewer_data(graph: nx.DiGraph, cards: dict[Latent, FeatureCard] | None = None) -> dict:
    """Everything ``viewer.js`` draws, as JSON-ready data: rows, columns, sites, nodes (by
    index; -1 is the metric), node edges, the faithfulness curves and the feature cards."""
    cards = cards or {}
    r = record_of(graph)
    nodes = nodes_of(graph)
    sites = sites_of(graph)
    subs = sorted({s.submodule for s in sites}, key=lambda s: s.order)
    row_of = {sub: i for i, sub in enumerate(subs)}
    columns, col_of = _columns(graph, sites)
    site_index = {s.id: i for i, s in enumerate(sites)}
    ids = list(nodes)
    index = {n: i for i, n in enumerate(ids)} | {METRIC: -1}
    families = _families(r.hierarchy, site_index, index)
    family_of = {ids[j]: fi for fi, f in enumerate(families) for j in f["members"]}
    site_rows = []
    for s in sites:
        site_rows.append(
            {
                "id": s.id,
                "row": row_of[s.submodule],
                "col": col_of[s.position],
                "label": f"{_row_label(s.submodule)} @ {s.label}",
                "embed": s.submodule.is_embed,
            }
        )
    node_rows = []
    for n in ids:
        node, a = nodes[n], graph.nodes[n]
        node_rows.append(
            {
                "id": n,
                "site": site_index[node.site.id],
                # an SAE on the embeddings makes latents there: features like any other
                "kind": "feature" if node.latent is not None else "embed" if node.is_embed else "error",
                "latent": node.latent,
                "effect": float(a["effect"]),
                "activation": None if a.get("activation") is None else float(a["activation"]),
                "card": node.feature.id if node.feature in cards else None,
                "family": family_of.get(n),
            }
        )
    answer = r.answer_label()
    return {
        "task": r.task or "circuit",
        "metric": (r.metric or "metric") + (f": {answer}" if answer is not None else ""),
        "total_effect": r.total_effect,
        "rows": [_row_label(s) for s in subs],
        "columns": columns,
        "sites": site_rows,
        "nodes": node_rows,
        "edges": [
            [index[u], index[v], float(w)] for u, v, w in graph.edges(data="weight") if u in index and v in index
        ],
        "curves": _curves(r.hierarchy),
        "families": families,
        "cards": {k.id: _card(c) for k, c in cards.items()},
    }


CURVE_NAMES = dict(
    zip(LEVELS, ("sites, attribution", "sites, optimised", "features, attribution", "features, optimised"), strict=True)
)


def _curves(h: HierarchyRecord | None) -> list[dict]:
    """Faithfulness against circuit size with random same-size baselines, per level (sites,
    then each feature ranking), as recorded by a hierarchical circuit."""
    if h is None:
        return []
    return [
        {
            "name": CURVE_NAMES[key],
            "unit": "sites" if key in SITE_LEVELS else "nodes",
            "chosen": level.size,
            "target": h.target,
            "ablation": h.ablation,
            "points": [[p.size, p.faithfulness, p.random_faithfulness] for p in level.curve],
        }
        for key, level in h.levels()
        if level.curve
    ]


def _families(h: HierarchyRecord | None, site_index: dict[str, int], index: dict[str, int]) -> list[dict]:
    """The hierarchical circuit's families whose site and members the graph has: name, site
    (index), members (node indices), effect, what it tracks and its validation."""
    out = []
    for f in h.families if h is not None else []:
        members = [index[m] for m in f.members if m in index]
        if f.site not in site_index or not members:
            continue
        out.append(
            {
                "id": f.id,
                "name": f.name,
                "site": site_index[f.site],
                "members": members,
                "size": len(f.members),  # with members outside the feature level (not in the graph)
                "effect": f.effect,
                "variable": f.variable,
                "tracking": f.tracking,
                "ablation_ratio": f.ablation_ratio,
                "interchange": f.interchange,
                "interchange_random": f.interchange_random,
            }
        )
    return out


def _card(card: FeatureCard) -> dict:
    return {
        "description": card.description,
        "contexts": card.contexts[:CONTEXTS_PER_CARD],
        "histogram": card.histogram,
        "max": card.max_activation,
        "frequency": card.frequency,
        "promoted": card.promoted,
        "suppressed": card.suppressed,
    }


def _script_json(data: dict) -> str:
    """JSON safe inside a <script> element: every "<" written as its escape, so no text in
    the data ("</script>", "<!--") can end or change the element."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def viewer_html(graph: nx.DiGraph, cards: dict[Latent, FeatureCard] | None = None) -> str:
    """The viewer as one HTML fragment: its markup and style, cytoscape.js (with its licence
    header), the circuit's data and ``viewer.js``; nothing is fetched at view time."""
    library = (HERE / "vendor" / "cytoscape.min.js").read_text(encoding="utf-8")
    script = (HERE / "viewer.js").read_text(encoding="utf-8")
    style = (HERE / "viewer.css").read_text(encoding="utf-8")
    return (
        f"<style>{style}</style>"
        '<div id="viewer" class="viewer">'
        '<div class="viewer-controls">'
        '<label>|effect| ≥ <input id="effect-filter" type="range" min="0" max="1000" value="0">'
        ' <output id="effect-value">0</output></label>'
        '<label>|edge weight| ≥ <input id="edge-filter" type="range" min="0" max="1000" value="0">'
        ' <output id="edge-value">0</output></label>'
        '<label>features per site <input id="per-site" type="number" min="1" max="500" value="24"></label>'
        '<button id="expand-all" type="button">expand all</button>'
        '<button id="collapse-all" type="button">collapse all</button>'
        '<button id="fit" type="button">fit</button>'
        '<span id="viewer-status" class="muted"></span>'
        "</div>"
        '<div class="viewer-body"><div id="cy" class="viewer-canvas" aria-label="circuit graph"></div>'
        '<aside class="viewer-side"><div id="card" class="viewer-card">'
        '<p class="muted">Click a site to show or hide its features; click a feature for its card.</p></div>'
        '<div id="curves" class="viewer-curves"></div></aside></div>'
        '<div id="tip" class="viewer-tip" hidden></div>'
        "</div>"
        f"<!-- cytoscape.js {CYTOSCAPE_VERSION} (MIT licence, in its header below), vendored from npm -->"
        f"<script>{library}</script>"
        f'<script type="application/json" id="circuit-data">{_script_json(viewer_data(graph, cards))}</script>'
        f"<script>{script}</script>"
    )
