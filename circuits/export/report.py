"""The self-contained HTML report: summary, graph, validation, feature cards, edit, SAE
quality and attribution fidelity in one file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from circuits.circuit.graph import nodes_of
from circuits.circuit.record import SITE_LEVELS, HierarchyRecord, record_of
from circuits.core.files import write_atomic
from circuits.core.vocab import Latent
from circuits.export.account import circuit_account
from circuits.export.viewer import viewer_html

if TYPE_CHECKING:
    from circuits.circuit.check import AttributionCheck
    from circuits.circuit.edit import EditReport
    from circuits.circuit.faithfulness import FaithfulnessCurve
    from circuits.circuit.families import ActiveFamily
    from circuits.export.cards import FeatureCard
    from sae.evaluate import SAEEvaluation
    from sae.interpret import Readability
    from sae.splitting import Split

STATIC_CARDS = 24  # cards written out as HTML; the viewer opens any latent's

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
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
        '<div class="ctx">'
        + " ".join(f'<span class="hi">{_e(t)}</span>' if i == c["index"] else _e(t) for i, t in enumerate(c["tokens"]))
        + f' <span class="muted">({c["activation"]:.2f})</span></div>'
        for c in card.contexts[:6]
    )
    peak = max(card.histogram) if card.histogram and max(card.histogram) > 0 else 1
    bars = "".join(
        f'<rect x="{i * 10}" y="{40 - 40 * v / peak:.1f}" width="9" height="{40 * v / peak:.1f}" fill="#5c7cfa"/>'
        for i, v in enumerate(card.histogram)
    )
    hist = (
        f'<svg width="{10 * len(card.histogram)}" height="42" role="img" aria-label="activation histogram">{bars}</svg>'
    )
    up = ", ".join(f"{_e(t)} ({v:+.2f})" for t, v in card.promoted)
    down = ", ".join(f"{_e(t)} ({v:+.2f})" for t, v in card.suppressed)
    eff = "" if effect is None else f" · effect {effect:+.3f}"
    return (
        f'<div class="card"><b>{_e(card.hook)} / {card.latent}</b>{_e(eff)}<br>'
        f'<span class="muted">active on {card.frequency:.1%} of corpus tokens, max {card.max_activation:.2f}</span>'
        f"{ctx or '<div class=muted>never active on the corpus sample</div>'}"
        f"<div>activations (non-zero): {hist}</div><div>promotes: {up}</div><div>suppresses: {down}</div></div>"
    )


LEVEL_NAMES = {
    "sites": "sites, attribution prefix",
    "sites_optimised": "sites, optimised",
    "attribution": "features, attribution prefix",
    "optimised": "features, optimised",
}


def _hierarchy_html(h: HierarchyRecord) -> str:
    """Both levels of a hierarchical circuit: sizes, F, completeness, random baselines."""
    rows = [
        [
            LEVEL_NAMES[key],
            lv.n_nodes if key in SITE_LEVELS else f"{lv.n_nodes} latents + {lv.n_error_nodes} errors",
            f"{lv.faithfulness:.3f}",
            f"{lv.completeness:.3f}",
            f"{lv.random_faithfulness:.3f}",
            "yes" if lv.reached_target else "no",
        ]
        for key, lv in h.levels()
    ]
    start = f", layers below {h.start_layer} never ablated" if h.start_layer else ""
    return (
        f"<h2>Hierarchical circuit: {_e(h.ablation)} ablation{_e(start)}, target F ≥ {h.target}, "
        f"{h.n_held_out} held-out pairs</h2>"
        + _table(["level", "size", "faithfulness", "completeness", "random same size", "target reached"], rows)
        + f"<p>Sites ({_e(h.site_level.ranking)} ranking): {_e(', '.join(s.id for s in h.sites))}. "
        f"The circuit's features come from the {_e(h.feature_level.ranking)} ranking.</p>"
    )


def _families_html(h: HierarchyRecord, prompt: tuple[str, list[ActiveFamily]] | None) -> str:
    """The family level: each family with its validation, the interchange of each variable's
    families together, and (given) one prompt's active families."""
    fl = h.family_level
    rows = [
        [
            f.id,
            f.name,
            len(f.members),
            f"{f.effect:+.3f}",
            "-" if f.variable is None else f"{f.variable} ({f.tracking:.2f})",
            "-" if f.ablation_ratio is None else f"{f.ablation_ratio:.2f}",
            "-" if f.interchange is None else f"{f.interchange:.0%} ({f.interchange_random:.0%})",
        ]
        for f in h.families
    ]
    head = ["family", "name", "latents", "effect", "tracks (ε²)", "ablation ratio", "interchange (other latents)"]
    html = (
        f"<h2>Feature families: {len(h.families)}, the first {fl.n_nodes} reach F {fl.faithfulness:.3f} "
        f"(random families {fl.random_faithfulness:.3f})</h2>"
        "<p class=\"muted\">Ablation ratio: the metric's change with the family's latents patched together to their "
        "corrupt values, over its recorded (attribution) effect, on the discovery prompts. Interchange: the "
        "share of held-out prompts on which the family, given its values on a prompt with another value of its "
        "variable, moves the model's answer to that prompt's answer.</p>" + _table(head, rows)
    )
    if h.interchange:
        rows = [
            [
                r.variable,
                r.n_families,
                f"{r.rate:.0%}",
                f"{r.random_rate:.0%}",
                r.n_prompts,
                "-" if r.steer_rate is None else f"{r.steer_rate:.0%} ({r.steer_random_rate:.0%})",
            ]
            for r in h.interchange
        ]
        head = ["variable", "families together", "interchange", "other latents", "prompts", "steering (other latents)"]
        html += _table(head, rows)
    if prompt is not None:
        text, active = prompt
        rows = [
            [a.id, a.name, f"{a.effect:+.3f}", ", ".join(f"{m.split('/')[-1]} ({e:+.3f})" for m, _, e in a.latents[:6])]
            for a in active
        ]
        html += f"<h3>One prompt: {_e(text)}</h3>" + _table(["family", "name", "effect here", "its latents here"], rows)
    return html


def _readability_html(r: Readability) -> str:
    """Where the circuit's effect sits against the toy language's ground-truth concepts."""
    rows = [
        [
            c.node,
            f"{c.effect:+.3f}",
            c.concept or "(never active)",
            f"{c.f1:.2f}",
            f"{c.precision:.2f}",
            f"{c.recall:.2f}",
        ]
        for c in r.strongest
    ]
    return (
        "<h2>Readability against the toy language's ground truth</h2>"
        f"<p>Of the circuit's |effect|: <b>{r.matched:.0%}</b> in latents matched to a concept "
        f"(F1 of 'active' against 'concept holds' ≥ {r.threshold:g} on held-out text), {r.unmatched:.0%} in "
        f"other latents, {r.error:.0%} in SAE error terms. Over the whole SAE set, {r.set_matched:.0%} of "
        "the alive latents are matched.</p>"
        + _table(["strongest latents", "effect", "best concept", "F1", "precision", "recall"], rows)
    )


def _split_node_html(node: Split, root: bool = False) -> str:
    concept = f" — {_e(node.concept)} (F1 {node.f1:.2f})" if node.concept else ""
    link = f"decoder cosine {node.cosine:.2f}, fires inside its parent {node.coactivation:.0%}"
    link = "" if root else f" <span class=muted>({link})</span>"
    kids = "".join(_split_node_html(c) for c in node.children)
    return f"<li>width {node.width} · latent {node.latent}{concept}{link}{f'<ul>{kids}</ul>' if kids else ''}</li>"


def _split_html(hook: str, tree: Split) -> str:
    """One circuit feature's split tree: the latent in the narrowest dictionary and, below it,
    the latents of each wider one that refine it."""
    widths = sorted({n.width for n in tree.walk()})
    return (
        f"<h2>Feature splitting: {_e(hook)} latent {tree.latent} across widths {_e(' → '.join(map(str, widths)))}</h2>"
        "<p>Each wider latent's parent is the narrower latent with the closest decoder direction that it fires "
        "inside (co-activation ≥ 0.5); the best ground-truth concept of each is beside it.</p>"
        f'<ul class="split">{_split_node_html(tree, root=True)}</ul>'
    )


def _edits_html(edits: list[EditReport]) -> list[str]:
    """Edits side by side (held-out prompts and text; each beside a random edit of its size),
    then each one's per-task table and completions."""
    others = [t for t in edits[0].tasks if t != edits[0].task]
    rows = []
    for e in edits:
        c, r = e.collateral, e.random
        target = e.tasks[e.task]
        rows.append(
            [
                e.edit.description,
                len(e.edit.features),
                f"{target.relative_change:+.1%}",
                "-" if target.left is None else f"{target.left:.1%}",
                *(f"{e.tasks[t].relative_change:+.1%}" for t in others),
                "-" if c is None else f"{c.tpp:+.3f}",
                "-" if r is None or r.collateral is None else f"{r.collateral.tpp:+.3f}",
                "-" if c is None else f"{c.text_of('all').kl:.4f}",
                "-" if r is None or r.collateral is None else f"{r.collateral.text_of('all').kl:.4f}",
            ]
        )
    parts = [
        f"<h2>Editing the model: {_e(edits[0].task)}</h2>",
        "<p>Held-out prompts and held-out toy-corpus text. <i>moved</i>: the clean metric's change as a share of "
        "the behaviour's range (clean - corrupt); <i>left</i>: the share of the clean preference left (0 = none). "
        "TPP = the target's removal - the other tasks' mean |change|; each edit beside a random edit of its size.</p>",
        _table(
            [
                "edit",
                "latents",
                f"{edits[0].task} moved",
                "left",
                *(f"{t} moved" for t in others),
                "TPP",
                "random TPP",
                "text KL (nats/token)",
                "random KL",
            ],
            rows,
        ),
    ]
    for e in edits:
        if e.completions:
            parts.append(f"<h3>{_e(e.edit.description)}: greedy completions</h3>")
            parts.append(_table(["prompt", "before", "after"], [[c.prompt, c.before, c.after] for c in e.completions]))
    return parts


def write_report(
    path: str | Path,
    graph: nx.DiGraph,
    svg: str | None = None,
    validation: FaithfulnessCurve | None = None,
    edits: list[EditReport] | None = None,
    sae_quality: SAEEvaluation | None = None,
    fidelity: AttributionCheck | None = None,
    cards: dict[Latent, FeatureCard] | None = None,
    faithfulness_png: Path | None = None,
    rankings_png: Path | None = None,
    readability: Readability | None = None,
    split: tuple[str, Split] | None = None,
    prompt: tuple[str, list[ActiveFamily]] | None = None,
) -> Path:
    """One self-contained HTML file that works offline (the interactive viewer with its
    library inlined, inline SVG, PNG as data URIs, no remote resources): task summary, the
    graph, validation, feature cards, edit results, SAE quality and attribution-vs-exact
    figures; a circuit with families opens with its account in words and has a families
    section (with ``prompt``, one prompt's text and its active families). Every text from the
    data is escaped."""
    import base64

    r = record_of(graph)
    nan = float("nan")
    account = circuit_account(r)
    parts = [
        f"<h1>Feature circuit: {_e(r.task or '')}</h1>",
        *([f'<div class="account">{"".join(f"<p>{_e(t)}</p>" for t in account)}</div>'] if account else []),
        _table(
            ["", "value"],
            [
                ["metric", r.metric or ""],
                ["prompt pairs", "" if r.n_examples is None else r.n_examples],
                ["clean metric", f"{nan if r.clean_metric is None else r.clean_metric:.3f}"],
                ["corrupt metric", f"{nan if r.corrupt_metric is None else r.corrupt_metric:.3f}"],
                ["method", r.method or ""],
                ["nodes / edges", f"{graph.number_of_nodes()} / {graph.number_of_edges()}"],
            ],
        ),
    ]
    parts.append("<h2>Circuit graph</h2>")
    if len(graph) <= 1:
        parts.append('<p class="bad">The circuit is empty: no node passed the threshold.</p>')
    parts.append(viewer_html(graph, cards))
    parts.append(
        f'<details><summary>Static picture (graphviz)</summary><div class="graph">{svg}</div></details>'
        if svg
        else '<p class="muted">(no static picture: graphviz missing)</p>'
    )
    if r.hierarchy is not None:
        parts.append(_hierarchy_html(r.hierarchy))
        if r.hierarchy.families:
            parts.append(_families_html(r.hierarchy, prompt))
        if rankings_png and Path(rankings_png).is_file():
            data = base64.b64encode(Path(rankings_png).read_bytes()).decode()
            parts.append(f'<img alt="feature rankings: attribution vs optimised" src="data:image/png;base64,{data}">')
    if readability is not None:
        parts.append(_readability_html(readability))
    if split is not None:
        parts.append(_split_html(*split))
    if validation:
        parts.append("<h2>Validation by ablation</h2>")
        parts.append(
            _table(
                ["faithfulness", "completeness", "CPR", "CMD", "ablation"],
                [
                    [
                        f"{validation.faithfulness:.3f}",
                        f"{validation.completeness:.3f}",
                        f"{validation.cpr:.3f}",
                        f"{validation.cmd:.3f}",
                        validation.ablation,
                    ]
                ],
            )
        )
        if faithfulness_png and Path(faithfulness_png).is_file():
            data = base64.b64encode(Path(faithfulness_png).read_bytes()).decode()
            parts.append(f'<img alt="faithfulness curve" src="data:image/png;base64,{data}">')
        parts.append(
            _table(
                ["feature nodes", "error nodes", "faithfulness", "random circuit"],
                [
                    [c.n_latents, c.n_errors, f"{c.faithfulness:.3f}", f"{c.random_faithfulness:.3f}"]
                    for c in validation.curve
                ],
            )
        )
    if cards:
        effects: dict[Latent, float] = {}
        for n, node in nodes_of(graph).items():
            if node.feature is not None:
                effects[node.feature] = effects.get(node.feature, 0.0) + graph.nodes[n]["effect"]
        strongest = sorted(cards, key=lambda k: -abs(effects.get(k, 0.0)))[:STATIC_CARDS]
        more = f" ({len(cards) - len(strongest)} more in the viewer above)" if len(cards) > len(strongest) else ""
        parts.append(
            f"<h2>Feature cards: the {len(strongest)} strongest latents{_e(more)}</h2><div class=cards>"
            + "".join(_card_html(cards[k], effects.get(k)) for k in strongest)
            + "</div>"
        )
    if edits:
        parts.extend(_edits_html(edits))
    if sae_quality:
        parts.append("<h2>SAE quality</h2>")
        parts.append(
            _table(
                ["hook", "L0", "FVU", "CE recovered", "dead", "dense"],
                [
                    [
                        h,
                        f"{r.l0:.1f}",
                        f"{r.fvu:.3f}",
                        f"{r.ce_recovered:.3f}",
                        f"{r.dead_frac:.3f}",
                        f"{r.dense_frac:.3f}",
                    ]
                    for h, r in sae_quality.saes.items()
                ],
            )
        )
    if fidelity:
        parts.append(f"<h2>Attribution vs exact patching ({fidelity.n_examples} pairs)</h2>")
        parts.append(
            _table(
                ["submodule", "r AtP", "r IG", "total IG", "total exact"],
                [
                    [h, f"{r.pearson_atp:.3f}", f"{r.pearson_ig:.3f}", f"{r.total_ig:.3f}", f"{r.total_exact:.3f}"]
                    for h, r in fidelity.submodules.items()
                ],
            )
        )
    html_text = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(r.task or 'circuit')} circuit</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    return write_atomic(Path(path), html_text)
