"""A circuit as circuit-tracer's frontend folder (``{slug}.json`` + ``graph-metadata.json``):
rows, ``feature`` = cantor(row, latent), influence, slugs (``to_circuit_tracer``,
``write_circuit_tracer``)."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from circuits.circuit.graph import METRIC
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.files import read_json, write_atomic
from circuits.core.vocab import SAE_KINDS, Latent, Submodule, in_forward_order
from circuits.export.graphml import finite

if TYPE_CHECKING:
    from circuits.export.cards import FeatureCard

CT_SCHEMA_VERSION = 1  # circuit-tracer's graph schema: ``feature`` = cantor(layer, index)
CT_METADATA = "graph-metadata.json"
SLUG_RULE = "letters, digits, '.', '_' and '-', not starting with '.'"
_SLUG = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
ROWS = "layer = the SAE's index in transcoder_list (the set's hooks in forward order); E = embeddings; logits on top"


def cantor(x: int, y: int) -> int:
    """Cantor's pairing of two non-negative integers (circuit-tracer's ``feature`` for
    schema_version >= 1: x = the node's ``layer`` value, y = the latent)."""
    if x < 0 or y < 0:
        raise CircuitsError(f"cantor pairing needs non-negative integers, got ({x}, {y})")
    return (x + y) * (x + y + 1) // 2 + y


def uncantor(z: int) -> tuple[int, int]:
    """The inverse of :func:`cantor`."""
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


def ct_rows(graph: nx.DiGraph, n_layers: int) -> list[str]:
    """The hooks whose nodes get circuit-tracer's ``layer`` values 0, 1, …: one row per SAE
    of the circuit's set (its record's ``saes``) in forward order — for the default set,
    ``3 × block + (0 attn, 1 mlp, 2 resid)``. Files without the set: attn, mlp and resid of
    every block, plus any other hook a node sits at. The frontend draws one row per value."""
    hooks = set(record_of(graph).saes or [Submodule(layer, k).hook for layer in range(n_layers) for k in SAE_KINDS])
    hooks |= {a["hook"] for n, a in graph.nodes(data=True) if n != METRIC and a.get("hook") and not _is_input(a)}
    return in_forward_order(hooks)


def _is_input(attrs: dict) -> bool:
    """The embedding vector (an SAE on the embeddings makes latents, which get a row)."""
    return attrs.get("kind") == "embed" and attrs.get("latent") is None


def check_slug(slug: str) -> str:
    """``slug`` if a URL path and a file name can carry it, else a one-line CircuitsError."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug) or slug == Path(CT_METADATA).stem:
        raise CircuitsError(f"slug {slug!r}: use 1 to 200 of {SLUG_RULE} (and not {Path(CT_METADATA).stem!r})")
    return slug


def default_slug(graph: nx.DiGraph) -> str:
    """The task's name with the characters a slug cannot hold replaced by ``-``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(record_of(graph).task or "circuit")).strip("-.")[:200]
    return slug if slug and slug != Path(CT_METADATA).stem else "circuit"


def ct_influence(graph: nx.DiGraph) -> dict[str, float]:
    """circuit-tracer's ``influence`` for every node but the metric: the cumulative share of
    total influence, in (0, 1], smaller = more important. circuit-tracer ranks nodes by their
    influence on the logits (paths through the row-normalised |adjacency|) and gives each
    node the sum of the scores ranked at or above it over the sum of all scores. Here the score
    is the node's |effect| (its total effect on the metric, which is what that influence
    estimates; edges may be thresholded or absent, effects are not): ties share the largest
    value of their group, so influence never decreases as |effect| decreases, and the weakest
    nodes get 1. With no effect at all every node gets 1."""
    scores = {n: abs(finite(e)) for n, e in graph.nodes(data="effect") if n != METRIC}
    total = sum(scores.values())
    if total <= 0:
        return dict.fromkeys(scores, 1.0)
    order = sorted(scores, key=lambda n: -scores[n])
    out, running, i = {}, 0.0, 0
    while i < len(order):
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            running += scores[order[j]]
            j += 1
        share = 1.0 if j == len(order) else min(running / total, 1.0)
        out.update(dict.fromkeys(order[i:j], share))
        i = j
    return out


def to_circuit_tracer(
    graph: nx.DiGraph,
    prompt_tokens: list[str] | None = None,
    cards: dict[Latent, FeatureCard] | None = None,
    slug: str | None = None,
) -> dict:
    """The graph as one circuit-tracer graph file (metadata / qParams / nodes / links,
    ``schema_version`` 1, validated by ``circuit_tracer.frontend.graph_models.Model``).

    * Rows: circuit-tracer has one transcoder per layer; here a block may have several SAEs,
      so a node's ``layer`` is its row, the SAE's index in the set's hooks in forward order
      (``ct_rows``; for the default set ``3 × block + (0 attn, 1 mlp, 2 resid)``;
      ``metadata.transcoder_list[row]`` is that row's hook), embeddings ``E``, the logits one
      row above the last SAE. The frontend labels its rows ``L<row>``.
    * Features: ``node_id`` is our node id, ``feature`` = cantor(row, latent), ``clerp`` the
      hook/latent and the feature card's description when ``cards`` has one, ``activation``
      the mean clean activation. Error nodes are ``mlp reconstruction error`` (the type the
      frontend draws as errors, whatever the submodule; the clerp names the hook), feature -1.
    * Tokens: one ``embedding`` node per prompt token (the frontend labels its token axis from
      them); tokens without an embedding node in the circuit get a link-less one with
      influence 1. Tokens are ``prompt_tokens``, else the graph's first clean prompt
      (the record's ``example``), else the position labels. Nodes summed over positions
      (``@*``) stand at the last token.
    * Logits: the metric node becomes the target logit node of the answer,
      ``Output "TOKEN" (p=0.734)`` with the model's probability on that prompt (the frontend
      parses that label); the wrong answer gets a link-less logit node. Without an example
      the label says the metric and that p is unknown, in the same format.
    * ``influence``: ``ct_influence`` (cumulative |effect| share); ``node_threshold`` is 1, so
      the frontend's pruning slider starts with every node shown.
    * Families (a hierarchical circuit's, ``circuits.circuit.families``) are circuit-tracer's
      supernodes (``qParams.supernodes``: ``[label, member node ids...]``), their members
      pinned; the frontend reads supernodes from its URL only, so ``view_query`` gives the
      query string that opens the subgraph grouped by family.
    * Link weights are our weights negated: ours are the change in the metric when the edge
      is patched to its corrupt value (negative = the behaviour relies on it), circuit-tracer's
      are contributions (positive = the source supports the target).
    """
    cards = cards or {}
    slug = check_slug(slug) if slug is not None else default_slug(graph)
    record = record_of(graph)
    labels = list(record.position_labels or [])
    positions = [p for _, p in graph.nodes(data="position") if isinstance(p, int)]
    layers = [a["layer"] for n, a in graph.nodes(data=True) if n != METRIC and isinstance(a.get("layer"), int)]
    n_layers = int(record.model.n_layers or max(layers, default=-1) + 1)
    needed = max(max(positions, default=-1) + 1, 1)
    tokens = [str(t) for t in prompt_tokens] if prompt_tokens else record.tokens()
    tokens += [labels[i] if i < len(labels) else f"p{i}" for i in range(len(tokens), needed)]
    last = len(tokens) - 1
    influence = ct_influence(graph)
    rows = ct_rows(graph, n_layers)

    ids: dict[str, str] = {}
    nodes: list[dict] = []
    embedded: set[int] = set()
    for n, a in graph.nodes(data=True):
        if n == METRIC:
            continue
        pos = a.get("position") if isinstance(a.get("position"), int) else last
        common = {"node_id": n, "ctx_idx": pos, "influence": influence[n], "effect": finite(a.get("effect"))}
        if _is_input(a):
            embedded.add(pos)
            node = {"feature": pos, "layer": "E", "feature_type": "embedding", "clerp": f"Emb: “{tokens[pos]}”"}
        elif a.get("is_error"):
            row = rows.index(a["hook"])
            node = {
                "feature": -1,
                "layer": str(row),
                "feature_type": "mlp reconstruction error",
                "clerp": f"Err: {a['hook']} “{tokens[pos]}”",
            }
        else:
            row = rows.index(a["hook"])
            feature = Latent(a["hook"], int(a["latent"]))
            card = cards.get(feature)
            node = {
                "feature": cantor(row, feature.index),
                "layer": str(row),
                "feature_type": "cross layer transcoder",
                "activation": finite(a.get("activation")),
                "clerp": (f"{card.description} " if card else "") + f"[{feature.id}]",
            }
            if card:  # the frontend lists these as the feature's top / bottom outputs
                node["top_logit_effects"] = [str(t) for t, _ in card.promoted]
                node["bottom_logit_effects"] = [str(t) for t, _ in card.suppressed]
        nodes.append(common | node)
        ids[n] = n
    taken = set(graph.nodes)
    for pos in sorted(set(range(len(tokens))) - embedded):
        node_id = f"embed@{labels[pos] if pos < len(labels) else f'p{pos}'}"
        while node_id in taken:
            node_id += "'"
        taken.add(node_id)
        nodes.append(
            {
                "node_id": node_id,
                "feature": pos,
                "layer": "E",
                "ctx_idx": pos,
                "feature_type": "embedding",
                "clerp": f"Emb: “{tokens[pos]}”",
                "influence": 1.0,
            }
        )
    logit_row = str(len(rows))
    metric = str(record.metric or "metric")
    example = record.example
    if example is not None and example.answer is not None and example.answer_prob is not None:
        outputs = [(example.answer, finite(example.answer_prob))]
    else:
        outputs = [(f"{metric}, p unknown", 0.0)]
    if example is not None and example.wrong_answer is not None and example.wrong_prob is not None:
        outputs.append((example.wrong_answer, finite(example.wrong_prob)))
    ids[METRIC] = METRIC  # the target logit node stands for the metric
    for i, (token, p) in enumerate(outputs):
        nodes.append(
            {
                "node_id": METRIC if i == 0 else "wrong_answer",
                "feature": i,
                "layer": logit_row,
                "ctx_idx": last,
                "feature_type": "logit",
                "token_prob": p,
                "is_target_logit": i == 0,
                "clerp": f'Output "{token}" (p={p:.3f})',
            }
        )
    for node in nodes:
        node.setdefault("is_target_logit", False)
        node.update({"run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": node["node_id"]})
    links = [
        {"source": ids[u], "target": ids[v], "weight": -finite(w)}
        for u, v, w in graph.edges(data="weight")
        if u in ids and v in ids
    ]
    label = record.answer_label(repr)
    answer = f" ({metric}" + (f": {label}" if label is not None else "") + ")"
    model = str(record.model.name or "")
    return {
        "metadata": {
            "slug": slug,
            "scan": "sae-circuits" + (f"-{model}" if model else ""),
            "transcoder_list": rows,
            "prompt_tokens": tokens,
            "prompt": _join(tokens),
            "node_threshold": 1.0,
            "schema_version": CT_SCHEMA_VERSION,
            "title_prefix": f"{record.task or 'circuit'}{answer}",
            "sae_circuits": {
                "task": record.task,
                "metric": metric,
                "rows": ROWS,
                "influence": "cumulative share of |effect| (nodes by decreasing |effect|)",
                "weights": "negated edge effects: positive = the source supports the target",
                "target_logit": "the metric node, labelled with the answer",
            },
        },
        "qParams": {**_supernodes(graph), "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


SUBGRAPH_MAX = 200  # circuit-tracer's subgraph draws at most this many pinned nodes


def _supernodes(graph: nx.DiGraph) -> dict:
    """A circuit with feature families: each family as a supernode ``[label, member ids...]``
    and its members pinned (largest families first, up to the subgraph's limit), so the
    frontend's subgraph opens on the families. Other circuits pin nothing."""
    h = record_of(graph).hierarchy
    supernodes, pinned = [], []
    for f in h.families if h is not None else []:
        members = [m for m in f.members if m in graph][: SUBGRAPH_MAX - len(pinned)]
        if not members:
            continue
        supernodes.append([f"{f.id} {f.name}", *members])
        pinned += members
    return {"pinnedIds": pinned, "supernodes": supernodes}


def view_query(data: dict) -> str:
    """The query string that opens a graph file (``to_circuit_tracer``'s ``data``) in
    circuit-tracer's frontend with its supernodes: the frontend takes supernodes from the
    URL only (an absent parameter empties them), so the file's ``qParams`` alone do not show."""
    params = {"slug": data["metadata"]["slug"], "clickedId": "metric"}
    if data["qParams"]["supernodes"]:
        params["pinnedIds"] = ",".join(data["qParams"]["pinnedIds"])
        params["supernodes"] = json.dumps(data["qParams"]["supernodes"], separators=(",", ":"))
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def _join(tokens: list[str]) -> str:
    """The prompt as text: tokens that carry their own spaces are concatenated, words joined."""
    if any(t[:1].isspace() for t in tokens[1:]):
        return "".join(tokens)
    return " ".join(tokens)


def write_circuit_tracer(
    graph: nx.DiGraph,
    folder: str | Path,
    cards: dict[Latent, FeatureCard] | None = None,
    slug: str | None = None,
) -> list[Path]:
    """Write ``folder/{slug}.json`` (``to_circuit_tracer``) and add its metadata to
    ``folder/graph-metadata.json`` (``{"graphs": [metadata, ...]}``: an entry with the same
    slug is replaced in place, others are kept), the folder circuit-tracer's server reads
    (``circuit_tracer.frontend.local_server.serve(data_dir=folder)``). Returns both paths."""
    slug = check_slug(slug) if slug is not None else default_slug(graph)
    data = to_circuit_tracer(graph, cards=cards, slug=slug)
    folder = Path(folder)
    meta_path = folder / CT_METADATA
    graphs: list = []
    if meta_path.exists():
        existing = read_json(meta_path, "circuit-tracer metadata file")
        if not isinstance(existing, dict) or not isinstance(existing.get("graphs"), list):
            raise CircuitsError(f'circuit-tracer metadata file {meta_path}: expected {{"graphs": [...]}}')
        graphs = existing["graphs"]
    same = [i for i, g in enumerate(graphs) if isinstance(g, dict) and g.get("slug") == slug]
    if same:
        graphs[same[0]] = data["metadata"]
        graphs = [g for i, g in enumerate(graphs) if i not in same[1:]]
    else:
        graphs.append(data["metadata"])
    graph_file = write_atomic(folder / f"{slug}.json", json.dumps(data, indent=1, allow_nan=False))
    return [graph_file, write_atomic(meta_path, json.dumps({"graphs": graphs}, indent=1, allow_nan=False))]
