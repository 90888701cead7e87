"""Export: pictures and files made from circuits and their validation."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from circuits.errors import CircuitsError
from circuits.files import write_atomic
from circuits.graph import METRIC
from sae.saeset import SAESet


def plot_faithfulness(result: dict, path: str | Path, title: str = "") -> Path:
    """The faithfulness curve (F against the number of feature nodes, log x) with the
    random-circuit baseline, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    sizes = [max(c["n_nodes"], 1) for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(sizes, [c["faithfulness"] for c in curve], "o-", label="circuit (top nodes by |effect|)")
    ax.plot(sizes, [c["random_faithfulness"] for c in curve], "s--", color="grey", label="random circuit, same size")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("feature nodes (error nodes kept alongside, see JSON)")
    ax.set_ylabel(f"faithfulness ({result['ablation']} ablation)")
    ax.set_title(title or f"CPR {result['cpr']:.2f}, CMD {result['cmd']:.2f}, completeness {result['completeness']:.2f}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    path = write_atomic(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------- feature cards

@dataclass
class FeatureCard:
    """What a latent responds to on the toy corpus, and what it writes."""

    hook: str
    latent: int
    contexts: list[dict]  # {"tokens": [...], "index": i (the activating token), "activation": a}
    histogram: list[int]  # counts of non-zero activations in ``bins`` equal bins up to ``max_activation``
    max_activation: float
    frequency: float  # share of corpus tokens where it is active
    promoted: list[tuple[str, float]]  # decoder direction through the unembedding: top tokens
    suppressed: list[tuple[str, float]]

    @property
    def description(self) -> str:
        """A short automatic label: the tokens it fires on most."""
        seen: list[str] = []
        for c in self.contexts:
            tok = c["tokens"][c["index"]]
            if tok not in seen:
                seen.append(tok)
        return " · ".join(seen[:3]) if seen else "(never active)"


@torch.no_grad()
def feature_cards(model: HookedTransformer, saes: SAESet, keys: list[tuple[str, int]], n_seqs: int = 256,
                  seq_len: int = 64, top: int = 8, bins: int = 20, window: int = 6,
                  batch_size: int = 32) -> dict[tuple[str, int], FeatureCard]:
    """Cards for ``(hook, latent)`` keys from a fixed sample of the toy corpus (BOS skipped)."""
    from circuits.splice import spliced
    from tasks.corpus import corpus_tokens

    if not keys:
        return {}
    tokens = corpus_tokens(model.tokenizer, "feature-cards", n_seqs, min(seq_len, model.cfg.n_ctx))
    hooks = sorted({h for h, _ in keys})
    index = {h: torch.tensor([i for k, i in keys if k == h]) for h in hooks}
    acts = {h: [] for h in hooks}
    for lo in range(0, n_seqs, batch_size):
        with spliced(model, saes, hooks=hooks) as nodes:
            model(tokens[lo:lo + batch_size])
        for h in hooks:
            acts[h].append(nodes[h].latents[:, 1:, index[h]].detach().float())
    cards = {}
    w_u = model.W_U.detach()
    for h in hooks:
        a = torch.cat(acts[h])  # [n_seqs, seq_len - 1, k]
        for j, latent in enumerate(index[h].tolist()):
            col = a[..., j]
            flat = col.flatten()
            best = flat.topk(min(top, flat.numel())).indices.tolist()
            contexts = []
            for i in best:
                if flat[i] <= 0:
                    break
                s, p = divmod(i, col.shape[1])
                p += 1  # BOS was skipped
                lo = max(1, p - window)
                contexts.append({"tokens": model.to_str_tokens(tokens[s, lo:p + 2]), "index": p - lo,
                                 "activation": float(flat[i])})
            live = flat[flat > 0]
            peak = float(live.max()) if len(live) else 0.0
            hist = torch.histc(live, bins=bins, min=0, max=peak).int().tolist() if len(live) else [0] * bins
            logits = saes[h].W_dec[latent].detach() @ w_u
            up, down = logits.topk(5), (-logits).topk(5)
            cards[(h, latent)] = FeatureCard(
                h, latent, contexts, hist, peak, float(len(live)) / max(flat.numel(), 1),
                [(model.to_single_str_token(int(t)), float(v)) for v, t in zip(up.values, up.indices)],
                [(model.to_single_str_token(int(t)), -float(v)) for v, t in zip(down.values, down.indices)])
    return cards


# ---------------------------------------------------------------- graph pictures

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


def to_dot(graph: nx.DiGraph, max_nodes: int = 40, annotations: dict[str, str] | None = None,
           cards: dict | None = None):
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
    scale = max((abs(a["effect"]) for n, a in sub.nodes(data=True) if a.get("hook") is not None),
                default=1.0)
    wmax = max((abs(w) for *_, w in sub.edges(data="weight")), default=1.0)
    dot = graphviz.Digraph("circuit", graph_attr={
        "rankdir": "BT", "newrank": "true", "nodesep": "0.25", "ranksep": "0.45", "fontname": "Helvetica",
        "label": _dot_text(_title(graph, sub, hidden)), "labelloc": "t", "fontsize": "14"},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled", "shape": "box"},
        edge_attr={"arrowsize": "0.5"})
    ranks: dict[tuple, list[str]] = {}
    for n, a in sub.nodes(data=True):
        ranks.setdefault((a.get("layer", 0), KIND_ORDER.get(a.get("kind"), 0)), []).append(n)
    ids = {n: f"n{i}" for i, n in enumerate(sub)}
    top_key, bottom_key = max(ranks), min(ranks)  # the metric's rank is the highest
    for key in sorted(ranks):
        with dot.subgraph(name=f"rank_{key[0]}_{key[1]}") as r:
            # the metric on top and the embeddings at the bottom, even when no drawn edge reaches them
            r.attr(rank="min" if key == bottom_key and key[1] == KIND_ORDER["embed"] else "same")
            for n in sorted(ranks[key], key=lambda n: (sub.nodes[n].get("position") or 0)):
                r.node(ids[n], **_node_style(n, sub.nodes[n], scale, annotations, cards))
    below = [k for k in ranks if k != top_key]
    if METRIC in sub and below:  # keep the metric on top even when no drawn edge reaches it
        for n in ranks[max(below)]:
            dot.edge(ids[n], ids[METRIC], style="invis")
    for u, v, w in sub.edges(data="weight"):
        dot.edge(ids[u], ids[v], penwidth=f"{0.6 + 4.4 * abs(w) / wmax:.2f}",
                 color="#3060d0" if w < 0 else "#d04040", tooltip=_dot_text(f"{u} -> {v}: {w:+.3f}"))
    _legend(dot)
    return dot


def _title(graph: nx.DiGraph, sub: nx.DiGraph, hidden: int) -> str:
    g = graph.graph
    head = f"{g.get('task', 'circuit')} ({g.get('metric', '')}): total effect {g.get('total_effect', float('nan')):+.2f}"
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
    style = {"label": "\n".join(_dot_text(x) for x in lines), "fillcolor": _colour(a["effect"], scale),
             "tooltip": _dot_text(n), "group": f"pos{a.get('position')}"}
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
        c.node("leg_rel", "feature the behaviour relies on\n(negative effect)", shape="box",
               style="rounded,filled", fillcolor=_colour(-1, 1))
        c.node("leg_opp", "feature working against it\n(positive effect)", shape="box",
               style="rounded,filled", fillcolor=_colour(1, 1))
        c.node("leg_err", "SAE error term", shape="box", style="dashed,filled", fillcolor="#ffffff")
        c.node("leg_emb", "token embedding", shape="invhouse", style="filled", fillcolor="#ffffff")
        c.edge("leg_rel", "leg_opp", style="invis")
        c.edge("leg_err", "leg_emb", style="invis")


def draw_graph(graph: nx.DiGraph, stem: str | Path, formats: tuple[str, ...] = ("png", "svg"),
               max_nodes: int = 40, annotations: dict[str, str] | None = None,
               cards: dict | None = None) -> tuple[list[Path], str | None]:
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
        return written, ("graphviz's `dot` is not installed, so no images were drawn (the .dot file was "
                         "written): apt-get install graphviz, or brew install graphviz")
    for fmt in formats:
        data = dot.pipe(format=fmt)
        written.append(write_atomic(stem.with_suffix(f".{fmt}"), data))
    return written, None


# ---------------------------------------------------------------- data exports

def write_graphml(graph: nx.DiGraph, path: str | Path) -> Path:
    """GraphML for Gephi / Cytoscape: None becomes "" and nested values JSON text."""
    import json

    out = nx.DiGraph()
    for n, a in graph.nodes(data=True):
        out.add_node(n, **{k: _scalar(v) for k, v in a.items()})
    for u, v, a in graph.edges(data=True):
        out.add_edge(u, v, **{k: _scalar(x) for k, x in a.items()})
    out.graph.update({k: _scalar(v) if not isinstance(v, (dict, list)) else json.dumps(v)
                      for k, v in graph.graph.items()})
    text = "\n".join(nx.generate_graphml(out))
    return write_atomic(Path(path), text)


def _scalar(v):
    import json

    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return v


def to_circuit_tracer(graph: nx.DiGraph, prompt_tokens: list[str] | None = None,
                      cards: dict | None = None, slug: str | None = None) -> dict:
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
            node = {"node_id": f"{n_layers + 1}_0_{len(labels) - 1 if labels else 0}", "feature": 0,
                    "layer": str(n_layers + 1), "ctx_idx": len(labels) - 1 if labels else 0,
                    "feature_type": "logit", "is_target_logit": True,
                    "clerp": f"metric: {graph.graph.get('metric', '')}", "influence": a.get("effect")}
        elif a.get("kind") == "embed":
            node = {"node_id": f"E_{pos}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                    "feature_type": "embedding", "clerp": f"embedding @{a['pos_label']}", "influence": a["effect"]}
        elif a.get("is_error"):
            f = -1 - offset[a["kind"]]
            node = {"node_id": f"{a['layer']}_{f}_{pos}", "feature": f, "layer": str(a["layer"]), "ctx_idx": pos,
                    "feature_type": "mlp reconstruction error", "clerp": f"{a['hook']} error @{a['pos_label']}",
                    "influence": a["effect"]}
        else:
            f = offset[a["kind"]] * width + a["latent"]
            card = cards.get((a["hook"], a["latent"]))
            node = {"node_id": f"{a['layer']}_{f}_{pos}", "feature": f, "layer": str(a["layer"]), "ctx_idx": pos,
                    "feature_type": "cross layer transcoder", "influence": a["effect"],
                    "activation": a.get("activation"),
                    "clerp": f"{a['hook']}/{a['latent']}" + (f": {card.description}" if card else "")}
        node.update({"token_prob": 0.0, "run_idx": 0, "reverse_ctx_idx": 0})
        node.setdefault("is_target_logit", False)
        node["jsNodeId"] = node["node_id"]
        ids[n] = node["node_id"]
        nodes.append(node)
    links = [{"source": ids[u], "target": ids[v], "weight": w} for u, v, w in graph.edges(data="weight")]
    tokens = prompt_tokens or labels
    return {"metadata": {"slug": slug or str(graph.graph.get("task", "circuit")), "scan": "sae-circuits",
                         "transcoder_list": sorted(graph.graph.get("saes", {})), "prompt_tokens": tokens,
                         "prompt": " ".join(tokens), "node_threshold": graph.graph.get("node_threshold_abs"),
                         "schema_version": 1},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


# ---------------------------------------------------------------- HTML report

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.graph svg{max-width:100%;height:auto} .cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:420px;font-size:12px}
.ctx{font-family:monospace;margin:2px 0} .hi{background:#ffd54f;font-weight:bold}
.muted{color:#777} .bad{color:#b00020}
"""


def _e(x) -> str:
    import html

    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _card_html(card: FeatureCard, effect: float | None) -> str:
    ctx = "".join(
        '<div class="ctx">' + " ".join(f'<span class="hi">{_e(t)}</span>' if i == c["index"] else _e(t)
                                       for i, t in enumerate(c["tokens"]))
        + f' <span class="muted">({c["activation"]:.2f})</span></div>' for c in card.contexts[:6])
    peak = max(card.histogram) if card.histogram and max(card.histogram) > 0 else 1
    bars = "".join(f'<rect x="{i * 10}" y="{40 - 40 * v / peak:.1f}" width="9" height="{40 * v / peak:.1f}" fill="#5c7cfa"/>'
                   for i, v in enumerate(card.histogram))
    hist = (f'<svg width="{10 * len(card.histogram)}" height="42" role="img" aria-label="activation histogram">'
            f"{bars}</svg>")
    up = ", ".join(f"{_e(t)} ({v:+.2f})" for t, v in card.promoted)
    down = ", ".join(f"{_e(t)} ({v:+.2f})" for t, v in card.suppressed)
    eff = "" if effect is None else f" · effect {effect:+.3f}"
    return (f'<div class="card"><b>{_e(card.hook)} / {card.latent}</b>{_e(eff)}<br>'
            f'<span class="muted">active on {card.frequency:.1%} of corpus tokens, max {card.max_activation:.2f}</span>'
            f"{ctx or '<div class=muted>never active on the corpus sample</div>'}"
            f"<div>activations (non-zero): {hist}</div><div>promotes: {up}</div><div>suppresses: {down}</div></div>")


def write_report(path: str | Path, graph: nx.DiGraph, svg: str | None = None, validation: dict | None = None,
                 edit: dict | None = None, sae_quality: dict | None = None, fidelity: dict | None = None,
                 cards: dict | None = None, faithfulness_png: Path | None = None) -> Path:
    """One self-contained HTML file (inline SVG, PNG as data URI, no scripts or remote
    resources): task summary, the graph, validation, feature cards, edit results, SAE
    quality and attribution-vs-exact figures. Every text from the data is escaped."""
    import base64

    g = graph.graph
    parts = [f"<h1>Feature circuit: {_e(g.get('task', ''))}</h1>",
             _table(["", "value"], [
                 ["metric", g.get("metric", "")], ["prompt pairs", g.get("n_examples", "")],
                 ["clean metric", f"{g.get('clean_metric', float('nan')):.3f}"],
                 ["corrupt metric", f"{g.get('corrupt_metric', float('nan')):.3f}"],
                 ["method", g.get("discover", {}).get("method", "")],
                 ["nodes / edges", f"{graph.number_of_nodes()} / {graph.number_of_edges()}"]])]
    parts.append("<h2>Circuit graph</h2>")
    if len(graph) <= 1:
        parts.append('<p class="bad">The circuit is empty: no node passed the threshold.</p>')
    parts.append(f'<div class="graph">{svg}</div>' if svg else '<p class="muted">(no picture: graphviz missing)</p>')
    if validation:
        parts.append("<h2>Validation by ablation</h2>")
        parts.append(_table(["faithfulness", "completeness", "CPR", "CMD", "ablation"],
                            [[f"{validation['faithfulness']:.3f}", f"{validation['completeness']:.3f}",
                              f"{validation['cpr']:.3f}", f"{validation['cmd']:.3f}", validation["ablation"]]]))
        if faithfulness_png and Path(faithfulness_png).is_file():
            data = base64.b64encode(Path(faithfulness_png).read_bytes()).decode()
            parts.append(f'<img alt="faithfulness curve" src="data:image/png;base64,{data}">')
        parts.append(_table(["feature nodes", "error nodes", "faithfulness", "random circuit"],
                            [[c["n_nodes"], c["n_error_nodes"], f"{c['faithfulness']:.3f}",
                              f"{c['random_faithfulness']:.3f}"] for c in validation["curve"]]))
    if cards:
        effects = {}
        for n, a in graph.nodes(data=True):
            if a.get("latent") is not None:
                key = (a["hook"], a["latent"])
                effects[key] = effects.get(key, 0.0) + a["effect"]
        parts.append("<h2>Feature cards</h2><div class=cards>"
                     + "".join(_card_html(c, effects.get(k)) for k, c in cards.items()) + "</div>")
    if edit:
        parts.append(f"<h2>Editing: {_e(edit['edit'].get('description', ''))}</h2>")
        parts.append(_table(["task", "accuracy before", "after", "metric before", "after", "moved"],
                            [[name, f"{r['before']['accuracy']:.3f}", f"{r['after']['accuracy']:.3f}",
                              f"{r['before']['clean_metric']:.3f}", f"{r['after']['clean_metric']:.3f}",
                              f"{r['relative_change']:+.1%}"] for name, r in edit["tasks"].items()]))
        parts.append(_table(["prompt", "before", "after"],
                            [[c["prompt"], c["before"], c["after"]] for c in edit["completions"]]))
    if sae_quality:
        parts.append("<h2>SAE quality</h2>")
        parts.append(_table(["hook", "L0", "FVU", "CE recovered", "dead", "dense"],
                            [[h, f"{r['l0']:.1f}", f"{r['fvu']:.3f}", f"{r['ce_recovered']:.3f}",
                              f"{r['dead_frac']:.3f}", f"{r['dense_frac']:.3f}"]
                             for h, r in sae_quality["saes"].items()]))
    if fidelity:
        parts.append(f"<h2>Attribution vs exact patching ({fidelity['n_examples']} pairs)</h2>")
        parts.append(_table(["submodule", "r AtP", "r IG", "total IG", "total exact"],
                            [[h, f"{r['pearson_atp']:.3f}", f"{r['pearson_ig']:.3f}", f"{r['total_ig']:.3f}",
                              f"{r['total_exact']:.3f}"] for h, r in fidelity["submodules"].items()]))
    html_text = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                 f"<title>{_e(g.get('task', 'circuit'))} circuit</title><style>{_CSS}</style></head><body>"
                 + "\n".join(parts) + "</body></html>")
    return write_atomic(Path(path), html_text)
