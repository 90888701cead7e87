"""Circuit pictures with graphviz: a grid of sites (rows: embeddings at the bottom, then each
layer's attn, mlp and resid, up to the metric; columns: the prompt's token positions), each
site a cluster holding its strongest features, the error term's share and what was left out,
joined by summed site -> site edges. ``layout`` decides what is drawn (a ``Picture``, testable
without graphviz; how much it shows is one ``PictureOptions``); ``to_dot`` renders a picture as
DOT; ``draw_graph`` writes PNG / SVG / PDF."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from circuits.circuit.graph import METRIC, site_graph
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.files import write_atomic
from circuits.core.vocab import Latent, Node, Submodule
from circuits.export.options import PictureOptions

if TYPE_CHECKING:
    from circuits.export.cards import FeatureCard

FORMATS = ("png", "svg", "pdf")
PNG_DPI = 96
NEGATIVE, POSITIVE, NO_EDGE = "#3060d0", "#d04040", "#909090"  # edge colours
DESCRIPTION_CHARS = 32  # a feature's description, truncated
TOKEN_CHARS = 14  # a column's token
PROMPT_CHARS = 110  # the prompt in the title


def _dot_text(text: str):
    """Literal text for a DOT label: backslashes and "<...>" made inert (graphviz.escape) and
    "&" written as an entity, since dot reads HTML entities even in plain labels."""
    import graphviz

    return graphviz.escape(str(text).replace("&", "&amp;"))


def _lines(*lines: str) -> str:
    """A multi-line DOT label: each line escaped, then joined by DOT's newline."""
    return "\\n".join(_dot_text(x) for x in lines)


def _cut(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _colour(effect: float, scale: float) -> str:
    """Blue for nodes the behaviour relies on (negative effect), red for nodes that work
    against it; stronger = more saturated."""
    t = min(abs(effect) / scale, 1.0) if scale > 0 else 0.0
    level = int(255 - 175 * t)
    return f"#{level:02x}{level:02x}ff" if effect < 0 else f"#ff{level:02x}{level:02x}"


# --- layout: what is drawn where ------------------------------------------------------------


@dataclass
class Column:
    """A token position with at least one site: its index (None: summed over positions), the
    task's slot name (``S2``, ``p3``, ``*``) and the example prompt's token there, if known."""

    position: int | None
    slot: str
    token: str | None = None

    @property
    def label(self) -> list[str]:
        if self.position is None:
            return ["all positions", "(summed)"]
        token = f"“{_cut(self.token, TOKEN_CHARS)}”" if self.token is not None else None
        if self.slot == f"p{self.position}":  # untemplated: the slot says nothing more
            return [token or self.slot, f"position {self.position}"]
        return [token, self.slot] if token else [self.slot, f"position {self.position}"]


@dataclass
class Feature:
    """A drawn node inside a site: a latent (``latent`` set) or the embedding vector."""

    node: str
    latent: int | None
    effect: float
    description: str | None = None


@dataclass
class SiteBox:
    """One site, drawn as a cluster at ``(row, column)``: its total effect (the sum of its
    circuit nodes), the strongest features drawn, how many latents (and their summed effect)
    were left out, and its error term (node id and effect) if the circuit has it."""

    id: str
    submodule: Submodule
    position: int | None
    slot: str
    row: int
    column: int
    effect: float
    features: list[Feature] = field(default_factory=list)
    n_latents: int = 0
    more: int = 0
    more_effect: float = 0.0
    error: tuple[str, float] | None = None

    @property
    def title(self) -> str:
        sub = self.submodule
        where = "embed" if sub.is_embed else f"L{sub.layer} {sub.kind}"
        return f"{where} @ {self.slot}"


@dataclass
class SiteEdge:
    """A drawn site -> site (or site -> metric) edge: the sum of the node edges between them.
    ``recorded`` False: the circuit has no edge path from ``source`` to the metric (edges
    not computed or pruned), drawn dotted with the site's total effect."""

    source: str
    target: str
    weight: float
    recorded: bool = True


@dataclass
class Picture:
    """Everything ``to_dot`` draws: rows bottom to top (``Submodule``s), columns left to right,
    the sites, the edges, the metric's label and the title's lines."""

    rows: list[Submodule]
    columns: list[Column]
    sites: list[SiteBox]
    edges: list[SiteEdge]
    metric: list[str]
    title: list[str]
    dropped_edges: int = 0
    colour_scale: float = 1.0

    @property
    def empty(self) -> bool:
        return not self.sites

    def drawn_nodes(self) -> list[str]:
        """The circuit's node ids drawn as nodes (features, embeddings, error terms)."""
        out = [f.node for s in self.sites for f in s.features]
        return out + [s.error[0] for s in self.sites if s.error]

    def reaching_metric(self) -> set[str]:
        """Site ids with a drawn path to the metric."""
        g = nx.DiGraph((e.source, e.target) for e in self.edges)
        return nx.ancestors(g, METRIC) if METRIC in g else set()

    @property
    def card_keys(self) -> list[Latent]:
        """The latents drawn, sorted: the feature cards the picture needs."""
        return sorted(
            {Latent(s.submodule.hook, f.latent) for s in self.sites for f in s.features if f.latent is not None}
        )


def layout(
    graph: nx.DiGraph,
    opts: PictureOptions | None = None,
    *,
    cards: dict[Latent, FeatureCard] | None = None,
    annotations: dict[str, str] | None = None,
) -> Picture:
    """What the picture of ``graph`` shows. Every site (a hierarchical circuit's skeleton, or
    the sites of the nodes present) is a box; each shows its strongest latents by |effect|, at
    most ``opts.per_site``, and ``opts.max_nodes`` in all, handed out one per site in turn
    (strongest sites first), so every site shows its best latent before any shows a second.
    Site edges weaker than ``opts.min_edge`` of the strongest are dropped unless one is a
    site's only path to the metric; a site with no recorded path gets a dotted edge with its
    total effect. A feature's description is its ``annotations`` entry (by node id), else its
    card's."""
    opts = opts or PictureOptions()
    annotations = annotations or {}
    cards = cards or {}
    sg = site_graph(graph)
    sg.remove_edges_from(list(nx.selfloop_edges(sg)))
    sites = {n: a for n, a in sg.nodes(data=True) if n != METRIC}
    rows = sorted({Submodule.parse(a["hook"]) for a in sites.values()}, key=lambda s: s.order)
    record = record_of(graph)
    columns: dict[int | None, Column] = {}
    for a in sorted(sites.values(), key=lambda a: (a["position"] is None, a["position"] or 0)):
        p = a["position"]
        if p not in columns:
            columns[p] = Column(p, a["pos_label"], record.token(p))
    col_index = {p: i for i, p in enumerate(columns)}
    boxes: dict[str, SiteBox] = {}
    for sid, a in sites.items():
        sub = Submodule.parse(a["hook"])
        boxes[sid] = SiteBox(
            sid, sub, a["position"], a["pos_label"], rows.index(sub), col_index[a["position"]], a["effect"]
        )
    latents: dict[str, list[str]] = {sid: [] for sid in boxes}
    for n, a in graph.nodes(data=True):
        if n == METRIC:
            continue
        node = Node.from_attrs(a)
        box = boxes[node.site.id]
        if a.get("is_error"):
            box.error = (n, a["effect"])
        elif node.feature is None:  # the embedding vector
            box.features.append(Feature(n, None, a["effect"], annotations.get(n)))
        else:
            latents[box.id].append((n, node.feature))
    for sid, ns in latents.items():
        ns.sort(key=lambda nf: (-abs(graph.nodes[nf[0]]["effect"]), nf[0]))
        boxes[sid].n_latents = len(ns)
    budget = opts.max_nodes
    order = sorted(boxes, key=lambda s: (-abs(boxes[s].effect), s))
    for k in range(opts.per_site):
        for sid in order:
            if budget and k < len(latents[sid]):
                n, feature = latents[sid][k]
                desc = annotations.get(n)
                if desc is None and feature in cards:
                    desc = cards[feature].description
                boxes[sid].features.append(Feature(n, feature.index, graph.nodes[n]["effect"], desc))
                budget -= 1
    for sid, box in boxes.items():
        shown = {f.node for f in box.features}
        rest = [n for n, _ in latents[sid] if n not in shown]
        box.more, box.more_effect = len(rest), sum(graph.nodes[n]["effect"] for n in rest)
    edges, dropped = _site_edges(sg, boxes, opts.min_edge)
    drawn = [f.effect for b in boxes.values() for f in b.features if f.latent is not None]
    drawn = drawn or [b.error[1] for b in boxes.values() if b.error]  # no latent: scale by the errors
    scale = max((abs(e) for e in drawn), default=1.0) or 1.0
    ordered = sorted(boxes.values(), key=lambda b: (b.row, b.column))
    return Picture(
        rows,
        list(columns.values()),
        ordered,
        edges,
        _metric_label(graph),
        _title(graph, ordered, len(edges) - sum(not e.recorded for e in edges), dropped, opts.per_site),
        dropped,
        scale,
    )


def _site_edges(sg: nx.DiGraph, boxes: dict[str, SiteBox], min_edge: float) -> tuple[list[SiteEdge], int]:
    """The site edges to draw and how many were dropped: those at least ``min_edge`` of the
    strongest, then, going down from the metric, each site that reaches the metric in the
    circuit but not through the kept edges gets back its strongest edge into a site that
    does; a site with no path at all gets an unrecorded edge to the metric."""
    full = [(u, v, w) for u, v, w in sg.edges(data="weight")]
    wmax = max((abs(w) for *_, w in full), default=0.0)
    kept = nx.DiGraph()
    kept.add_nodes_from([*boxes, METRIC])
    kept.add_weighted_edges_from((u, v, w) for u, v, w in full if abs(w) >= min_edge * wmax and wmax > 0)
    reach_full = nx.ancestors(sg, METRIC) if METRIC in sg else set()
    reaching = nx.ancestors(kept, METRIC)
    extra: list[SiteEdge] = []
    for sid in sorted(boxes, key=lambda s: boxes[s].submodule.order, reverse=True):
        if sid in reaching:
            continue
        if sid in reach_full:
            outs = [(v, w) for _, v, w in sg.out_edges(sid, data="weight") if v in reach_full or v == METRIC]
            v, w = max(outs, key=lambda e: abs(e[1]))
            kept.add_edge(sid, v, weight=w)
        else:
            extra.append(SiteEdge(sid, METRIC, boxes[sid].effect, recorded=False))
        reaching |= {sid} | nx.ancestors(kept, sid)
    edges = [SiteEdge(u, v, w) for u, v, w in kept.edges(data="weight")]
    edges.sort(key=lambda e: -abs(e.weight))
    return edges + extra, len(full) - len(edges)


def _fmt(x, spec: str = "+.2f") -> str:
    try:
        return format(float(x), spec).replace("-", "−")
    except (TypeError, ValueError):
        return "?"


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _metric_label(graph: nx.DiGraph) -> list[str]:
    r = record_of(graph)
    lines = [f"metric: {r.metric or '?'} ({r.task or 'task'})"]
    answer = r.answer_label(lambda t: f"“{_cut(t, TOKEN_CHARS)}”")
    if answer is not None:
        lines.append(answer)
    if r.clean_metric is not None and r.corrupt_metric is not None:
        lines.append(f"clean {_fmt(r.clean_metric, '.2f')} → corrupt {_fmt(r.corrupt_metric, '.2f')}")
    return lines


def _title(graph: nx.DiGraph, boxes: list[SiteBox], n_edges: int, dropped: int, per_site: int) -> list[str]:
    r = record_of(graph)
    head = f"{r.task or 'circuit'} ({r.metric or ''}): total effect {_fmt(r.total_effect)}"
    if not boxes:
        return [head + " — the circuit is empty"]
    n_sites = sum(not b.submodule.is_embed for b in boxes)
    n_embed = len(boxes) - n_sites
    n_latents = sum(b.n_latents for b in boxes)
    n_errors = sum(b.error is not None for b in boxes)
    sizes = f"{_n(n_sites, 'site')}, {_n(n_latents, 'latent')}, {_n(n_errors, 'error term')}"
    sizes += f", {_n(n_embed, 'embedding')}" if n_embed else ""
    h = r.hierarchy
    if h is not None:
        site, feat = h.site_level, h.feature_level
        held = f", {h.n_held_out} held-out pairs" if h.n_held_out else ""
        level = (
            f"hierarchical circuit, {h.ablation} ablation{held}: {sizes}; faithfulness of the "
            f"{site.n_nodes} sites {_fmt(site.faithfulness, '.2f')}, of the features "
            f"{_fmt(feat.faithfulness, '.2f')} ({feat.ranking} ranking)"
        )
    else:
        level = f"circuit: {sizes}, {_n(graph.number_of_edges(), 'edge')}"
    shown = sum(1 for b in boxes for f in b.features if f.latent is not None)
    drawn = f"drawn: the strongest latents of each site (≤ {per_site} per site, {shown} of {n_latents})"
    drawn += f", {_n(n_edges, 'site edge')}" + (
        f" ({dropped} weak {'one' if dropped == 1 else 'ones'} left out)" if dropped else ""
    )
    lines = [head, level, drawn]
    if r.example is not None and r.example.prompt_tokens:
        prompt = _cut(" ".join(str(t) for t in r.example.prompt_tokens), PROMPT_CHARS)
        lines.append(f"first prompt: {prompt}   (columns: only the positions with a site)")
    return lines


# --- rendering ------------------------------------------------------------------------------


def card_keys(graph: nx.DiGraph, opts: PictureOptions | None = None) -> list[Latent]:
    """The latents the picture of ``graph`` draws (``layout(graph, opts).card_keys``): the
    feature cards it needs, to fetch before drawing it with them."""
    return layout(graph, opts).card_keys


def to_dot(pic: Picture):
    """A graphviz.Digraph of a ``layout``: one cluster per site on a grid (rows bottom to
    top: embeddings, then attn, mlp, resid of each layer, then the metric; columns: token
    positions, labelled with the example's tokens and slot names), features coloured by the
    sign and strength of their effect (blue = the behaviour relies on it), the error term as a
    dashed box with its share of the site's effect, site edges of width ∝ |weight|, a legend
    and a title. Every text is escaped for DOT."""
    import graphviz

    dot = graphviz.Digraph(
        "circuit",
        graph_attr={
            "rankdir": "BT",
            "newrank": "true",
            "compound": "true",
            "nodesep": "0.18",
            "ranksep": "0.55",
            "fontname": "Helvetica",
            "fontsize": "13",
            "label": _lines(*pic.title),
            "labelloc": "t",
            "labeljust": "l",
            "pad": "0.2",
        },
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled", "shape": "box", "margin": "0.06,0.03"},
        edge_attr={"arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "10"},
    )
    ncol = max(len(pic.columns), 1)
    anchor = {(r, c): f"a{r}_{c}" for r in range(len(pic.rows)) for c in range(ncol)}  # invisible where no site
    cluster = {}
    rank_members: dict[int, list[str]] = {r: [] for r in range(len(pic.rows))}
    for i, box in enumerate(pic.sites):
        cluster[box.id] = f"cluster_s{i}"
        members = _site_cluster(dot, box, i, pic)
        anchor[(box.row, box.column)] = members[len(members) // 2]  # edges meet the site in its middle
        rank_members[box.row] += members
    # the grid: an anchor per row and column, the token header below, the metric above
    occupied = {(b.row, b.column) for b in pic.sites}
    for (r, c), a in anchor.items():
        if (r, c) not in occupied:
            dot.node(a, "", shape="point", style="invis", width="0", height="0", group=f"col{c}")
            rank_members[r].append(a)
    header = [f"h{c}" for c in range(ncol)]
    with dot.subgraph(name="rank_header") as s:
        s.attr(rank="same")
        for c, col in enumerate(pic.columns):
            s.node(header[c], _lines(*col.label), shape="plaintext", style="", fontsize="11", group=f"col{c}")
        if not pic.columns:
            s.node(header[0], "", shape="point", style="invis", width="0", height="0")
    for c in range(ncol - 1):
        dot.edge(header[c], header[c + 1], style="invis")
    for r, members in rank_members.items():
        with dot.subgraph(name=f"rank_{r}") as s:
            s.attr(rank="same")
            for m in members:
                s.node(m)
    for c in range(ncol):
        chain = [header[c]] + [anchor[(r, c)] for r in range(len(pic.rows))]
        for lo, hi in zip(chain, chain[1:], strict=False):
            dot.edge(lo, hi, style="invis", weight="8")
    with dot.subgraph(name="rank_metric") as s:
        s.attr(rank="max")
        s.node(
            "metric",
            _lines(*pic.metric),
            shape="doubleoctagon",
            fillcolor="#f0e68c",
            fontsize="11",
            group=f"col{ncol - 1}",
        )
    dot.edge(anchor[(len(pic.rows) - 1, ncol - 1)] if pic.rows else header[-1], "metric", style="invis", weight="8")
    # the edges between sites
    where = {b.id: anchor[(b.row, b.column)] for b in pic.sites}
    wmax = max((abs(e.weight) for e in pic.edges if e.recorded), default=1.0) or 1.0
    for e in pic.edges:
        head = "metric" if e.target == METRIC else where[e.target]
        attrs = {"ltail": cluster[e.source], "tooltip": _dot_text(f"{e.source} -> {e.target}: {e.weight:+.3f}")}
        if e.target != METRIC:
            attrs["lhead"] = cluster[e.target]
        if e.recorded:
            attrs.update(
                penwidth=f"{1.0 + 5.0 * abs(e.weight) / wmax:.2f}",
                color=NEGATIVE if e.weight < 0 else POSITIVE,
                fontcolor=NEGATIVE if e.weight < 0 else POSITIVE,
                label=_dot_text(_fmt(e.weight)),
            )
        else:
            attrs.update(style="dotted", color=NO_EDGE, penwidth="1.2", constraint="false")
        dot.edge(where[e.source], head, **attrs)
    if not pic.empty:
        _legend(dot, pic)
    return dot


def _site_cluster(dot, box: SiteBox, i: int, pic: Picture) -> list[str]:
    """Draw one site as a cluster; returns the ids of its nodes, left to right (all on the
    site's row and in its column's group)."""
    members = []
    group = {"group": f"col{box.column}"}
    with dot.subgraph(name=f"cluster_s{i}") as c:
        c.attr(
            label=_lines(f"{box.title}   {_fmt(box.effect)}"),
            tooltip=_dot_text(box.id),
            style="rounded,filled",
            fillcolor="#f7f7f7",
            color=NEGATIVE if box.effect < 0 else POSITIVE if box.effect > 0 else NO_EDGE,
            fontsize="11",
            labeljust="l",
            labelloc="b",
            margin="6",
        )
        for j, f in enumerate(box.features):
            nid, tip = f"s{i}_f{j}", {"tooltip": _dot_text(f.node)}
            if f.latent is None:  # the embedding
                column = pic.columns[box.column]
                what = f"embedding of “{_cut(column.token, TOKEN_CHARS)}”" if column.token else "token embedding"
                lines = [what] + ([_cut(f.description, DESCRIPTION_CHARS)] if f.description else [])
                c.node(
                    nid,
                    _lines(*lines),
                    shape="invhouse",
                    fillcolor=_colour(f.effect, abs(f.effect) or 1.0),
                    **tip,
                    **group,
                )
            else:
                lines = [f"#{f.latent}   {_fmt(f.effect)}"]
                lines += [_cut(f.description, DESCRIPTION_CHARS)] if f.description else []
                c.node(
                    nid,
                    _lines(*lines),
                    style="rounded,filled",
                    fillcolor=_colour(f.effect, pic.colour_scale),
                    **tip,
                    **group,
                )
            members.append(nid)
        if box.error:
            err, effect = box.error
            share = effect / box.effect if box.effect else None
            lines = [f"SAE error   {_fmt(effect)}"]
            if share is not None and abs(share) < 10:
                lines.append(f"{share:.0%} of the site".replace("-", "−"))
            c.node(
                f"s{i}_err",
                _lines(*lines),
                style="dashed,filled",
                color="#606060",
                fillcolor=_colour(effect, pic.colour_scale),
                tooltip=_dot_text(err),
                **group,
            )
            members.append(f"s{i}_err")
        if box.more or (not box.features and not box.error):
            text = (
                [f"+{box.more} more feature{'s' if box.more != 1 else ''}", f"sum {_fmt(box.more_effect)}"]
                if box.more
                else ["no node kept"]
            )
            c.node(f"s{i}_more", _lines(*text), shape="plaintext", style="", fontcolor="#404040", **group)
            members.append(f"s{i}_more")
        for lo, hi in zip(members, members[1:], strict=False):  # strongest first, left to right
            c.edge(lo, hi, style="invis")
    return members


def _legend(dot, pic: Picture) -> None:
    """A legend (static HTML-like table, no user text) above the grid's first column."""
    blue, red = _colour(-1, 1), _colour(1, 1)
    rows = [
        (f'BGCOLOR="{blue}" BORDER="1"', "#latent", "feature the behaviour relies on (effect &lt; 0)"),
        (f'BGCOLOR="{red}" BORDER="1"', "#latent", "feature working against it (effect &gt; 0)"),
        ('BORDER="1" STYLE="dashed"', "SAE error", "what the SAE misses, share of its site's effect"),
        ('BORDER="1"', "site", "box = submodule at a token position, with its total effect"),
        (
            "",
            f'<FONT COLOR="{NEGATIVE}"><B>⟶</B></FONT>',
            "site edge, summed weight &lt; 0 (relied on); width ∝ |weight|",
        ),
        ("", f'<FONT COLOR="{POSITIVE}"><B>⟶</B></FONT>', "site edge, summed weight &gt; 0 (works against)"),
        ("", f'<FONT COLOR="{NO_EDGE}">· · ·</FONT>', "no recorded edge: the site's total effect"),
    ]
    cells = "".join(f'<TR><TD {style}>{key}</TD><TD ALIGN="LEFT">{text}</TD></TR>' for style, key, text in rows)
    label = (
        '<<TABLE BORDER="1" COLOR="#a0a0a0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="3">'
        '<TR><TD COLSPAN="2"><B>legend</B></TD></TR>'
        f"{cells}"
        '<TR><TD COLSPAN="2" ALIGN="LEFT">effect = change in the metric when patched clean → corrupt</TD></TR>'
        "</TABLE>>"
    )
    with dot.subgraph(name="rank_metric_legend") as s:
        s.attr(rank="max")
        s.node("legend", label, shape="plaintext", style="", fontsize="10", group="col0")
    dot.edge("legend", "metric", style="invis")


def draw_graph(
    graph: nx.DiGraph,
    stem: str | Path,
    formats: tuple[str, ...] = ("png", "svg"),
    opts: PictureOptions | None = None,
    *,
    cards: dict[Latent, FeatureCard] | None = None,
    annotations: dict[str, str] | None = None,
) -> tuple[list[Path], str | None]:
    """Write ``stem.dot`` and ``stem.<format>`` for each format (PNG at ``PNG_DPI``) of
    ``layout(graph, opts, cards=cards, annotations=annotations)``. Returns the files written
    and, when the ``dot`` binary is missing, a one-line message saying how to install it (the
    .dot file is still written)."""
    import shutil

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise CircuitsError(f"unknown image format {bad[0]!r}: use {', '.join(FORMATS)}")
    stem = Path(stem)
    dot = to_dot(layout(graph, opts, cards=cards, annotations=annotations))
    written = [write_atomic(stem.with_suffix(".dot"), dot.source)]
    if shutil.which("dot") is None:
        return written, (
            "graphviz's `dot` is not installed, so no images were drawn (the .dot file was "
            "written): apt-get install graphviz, or brew install graphviz"
        )
    for fmt in formats:
        if fmt == "png":
            png = dot.copy()
            png.graph_attr["dpi"] = str(PNG_DPI)
            data = png.pipe(format=fmt)
        else:
            data = dot.pipe(format=fmt)
        written.append(write_atomic(stem.with_suffix(f".{fmt}"), data))
    return written, None
