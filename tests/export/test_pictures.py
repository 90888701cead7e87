"""Pictures: one cluster per site on a grid of layers x token positions, every drawn node on a
drawn path to the metric, the cap per site, column labels, edge colours and widths, labels
escaped for DOT, a missing dot binary, the empty circuit, and which latents get feature cards."""

import re
import shutil
import subprocess

import networkx as nx
import pytest

from circuits.circuit.graph import METRIC
from circuits.circuit.record import CircuitRecord, ExampleRecord, attach, record_of
from circuits.core.vocab import Latent
from circuits.export import pictures
from circuits.export.options import PictureOptions
from circuits.export.pictures import NEGATIVE, NO_EDGE, POSITIVE, card_keys, draw_graph, layout, to_dot
from tests.helpers import card, hierarchical_graph, nasty_graph, node_attrs, toy_graph, with_record

DOT = shutil.which("dot") is None
needs_dot = pytest.mark.skipif(DOT, reason="graphviz's dot is not installed (make test installs it)")


def parse(source: str) -> dict:
    """The DOT source's clusters ({name: (tooltip, [node ids])}), visible edges (tail, head,
    attrs) and visible nodes (id -> attrs)."""
    clusters = {}
    for m in re.finditer(r"\tsubgraph (cluster_s\d+) \{\n(.*?)\n\t\}", source, re.S):
        body = m.group(2)
        tip = re.search(r'^\t\t[^\n]*? tooltip="((?:[^"\\]|\\.)*)"$', body, re.M)
        nodes = re.findall(r"^\t\t(\w+) \[", body, re.M)
        clusters[m.group(1)] = (tip.group(1) if tip else None, nodes)
    edges = []
    for m in re.finditer(r"^\t+(\w+) -> (\w+) \[(.*)\]$", source, re.M):
        if "style=invis" not in m.group(3):
            edges.append((m.group(1), m.group(2), m.group(3)))
    nodes = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\t+(\w+) \[(.*)\]$", source, re.M)
        if "style=invis" not in m.group(2) and m.group(1) not in ("graph", "node", "edge")
    }
    return {"clusters": clusters, "edges": edges, "nodes": nodes}


def attr(attrs: str, name: str) -> str | None:
    m = re.search(rf'\b{name}=("(?:[^"\\]|\\.)*"|\S+)', attrs)
    return m.group(1).strip('"') if m else None


def test_every_site_is_a_cluster_on_a_drawn_path_to_the_metric():
    g = hierarchical_graph()
    dot = parse(to_dot(layout(g)).source)
    sites = {s.id for s in record_of(g).hierarchy.sites} | {"embed@S2", "embed@A"}
    assert {tip for tip, _ in dot["clusters"].values()} == sites  # the whole skeleton, nothing hidden
    in_cluster = {n: c for c, (_, nodes) in dot["clusters"].items() for n in nodes}
    drawn = set(dot["nodes"]) - {"metric", "legend"} - {n for n in dot["nodes"] if re.fullmatch(r"h\d+", n)}
    assert drawn <= set(in_cluster)  # every drawn circuit node sits in its site's cluster
    links = nx.DiGraph()
    for _, head, attrs in dot["edges"]:
        if attr(attrs, "ltail"):  # the legend's edges have none
            links.add_edge(attr(attrs, "ltail"), attr(attrs, "lhead") or head)
    assert set(dot["clusters"]) <= nx.ancestors(links, "metric")
    pic = layout(g)
    assert {s.id for s in pic.sites} == sites and pic.reaching_metric() == sites


def test_every_site_reaches_the_metric_without_recorded_edges():
    g = toy_graph()  # attn/9@S2 has no edge; drop the rest too (discover --no-edges)
    g.remove_edges_from(list(g.edges))
    pic = layout(g)
    assert pic.reaching_metric() == {s.id for s in pic.sites}
    assert all(not e.recorded and e.target == METRIC for e in pic.edges)
    source = to_dot(layout(g)).source
    assert source.count("style=dotted") == len(pic.sites) and f'color="{NO_EDGE}"' in source


def test_sites_show_their_strongest_latents_up_to_the_cap_and_say_how_many_more():
    g = hierarchical_graph()
    mlp = next(s for s in layout(g).sites if s.id == "blocks.0.hook_mlp_out@END")
    assert [f.latent for f in mlp.features] == [10, 11, 12, 13] and mlp.more == 2
    assert mlp.more_effect == pytest.approx(-0.3) and mlp.error == ("blocks.0.hook_mlp_out/err@END", -0.3)
    source = to_dot(layout(g)).source
    assert "+2 more features\\nsum −0.30" in source and "#13   −0.30" in source and "#14" not in source
    assert "SAE error   −0.30\\n13% of the site" in source  # the error's share of the site's −2.40
    assert "no node kept" in source  # the skeleton site L1 mlp
    two = next(s for s in layout(g, PictureOptions(per_site=2)).sites if s.id == "blocks.0.hook_mlp_out@END")
    assert len(two.features) == 2 and two.more == 4


def test_the_node_budget_gives_every_site_its_best_latent_first():
    pic = layout(hierarchical_graph(), PictureOptions(max_nodes=3))
    shown = {s.id: [f.latent for f in s.features if f.latent is not None] for s in pic.sites}
    assert shown["blocks.0.hook_mlp_out@END"] == [10]  # the strongest site gets one, not four
    assert shown["blocks.1.hook_resid_post@END"] == [3] and shown["blocks.0.hook_attn_out@END"] == [1]
    weakest = next(s for s in pic.sites if s.id == "blocks.0.hook_attn_out@A")
    assert weakest.features == [] and weakest.more == 1  # out of budget, still drawn
    assert "(≤ 4 per site, 3 of 9)" in pic.title[2]


def test_columns_are_token_positions_labelled_with_the_prompt():
    g = hierarchical_graph()
    pic = layout(g)
    assert [(c.position, c.slot, c.token) for c in pic.columns] == [
        (1, "A", "Mary"),
        (3, "S2", "John"),
        (4, "END", "to"),
    ]
    source = to_dot(layout(g)).source
    for token, slot in [("Mary", "A"), ("John", "S2"), ("to", "END")]:
        assert f'label="“{token}”\\n{slot}"' in source
    assert "“John”\\nB" not in source  # position B has no site: no column
    assert "first prompt: <bos> Mary John John to" in pic.title[3] and "positions with a site" in pic.title[3]
    assert "“Mary” vs “John”" in pic.metric[1]
    rows = [(r.layer, r.kind) for r in pic.rows]
    assert rows == [(-1, "embed"), (0, "attn"), (0, "mlp"), (1, "mlp"), (1, "resid")]  # bottom to top


def test_untemplated_positions_are_labelled():
    g = toy_graph()
    g.add_node("blocks.0.hook_mlp_out/3@*", **node_attrs("blocks.0.hook_mlp_out", 3, None, "*", -0.4))
    g.add_node("blocks.0.hook_mlp_out/4@p1", **node_attrs("blocks.0.hook_mlp_out", 4, 1, "p1", -0.3))
    with_record(g, example=ExampleRecord(prompt_tokens=["<bos>", "went"]))
    cols = layout(g).columns
    assert cols[0].label == ["“went”", "position 1"] and cols[-1].label == ["all positions", "(summed)"]
    assert layout(g).columns[1].label == ["IO", "position 2"]  # no token known there


def test_edge_colour_is_the_sign_and_width_grows_with_the_weight():
    g = hierarchical_graph()
    pic = layout(g)
    recorded = [e for e in pic.edges if e.recorded]
    assert any(e.weight > 0 for e in recorded) and any(e.weight < 0 for e in recorded)
    drawn = [attrs for _, _, attrs in parse(to_dot(layout(g)).source)["edges"] if attr(attrs, "penwidth")]
    by_weight = []
    for attrs in drawn:
        if attr(attrs, "style") == "dotted":
            continue
        weight = float(attr(attrs, "label").replace("−", "-"))
        assert attr(attrs, "color") == (NEGATIVE if weight < 0 else POSITIVE)
        by_weight.append((abs(weight), float(attr(attrs, "penwidth"))))
    by_weight.sort()
    assert len(by_weight) == len(recorded) and [w for _, w in by_weight] == sorted(w for _, w in by_weight)
    assert by_weight[0][1] < by_weight[-1][1]


def test_weak_site_edges_are_dropped_unless_they_are_a_sites_only_path():
    pic = layout(hierarchical_graph())
    pairs = {(e.source, e.target) for e in pic.edges}
    assert ("blocks.0.hook_attn_out@END", "blocks.1.hook_resid_post@END") not in pairs  # weak, not needed
    assert ("blocks.0.hook_attn_out@A", "blocks.1.hook_resid_post@END") in pairs  # weak, the only path
    assert pic.dropped_edges == 1 and "1 weak one left out" in pic.title[2]
    assert ("blocks.1.hook_mlp_out@END", METRIC) in pairs  # no edge at all: dotted
    every = layout(hierarchical_graph(), PictureOptions(min_edge=0.0))
    assert every.dropped_edges == 0 and len([e for e in every.edges if e.recorded]) == 7


def test_title_names_the_task_sizes_and_both_levels_faithfulness():
    title = layout(hierarchical_graph()).title
    assert title[0] == "ioi (logit_diff): total effect −2.00"
    assert "hierarchical circuit, mean ablation, 16 held-out pairs" in title[1]
    assert "5 sites, 9 latents, 3 error terms, 2 embeddings" in title[1]
    assert "sites 0.97" in title[1] and "features 0.91 (optimised ranking)" in title[1]
    plain = layout(toy_graph()).title
    assert plain[1] == "circuit: 3 sites, 3 latents, 1 error term, 1 embedding, 4 edges"


def test_descriptions_come_from_annotations_then_cards():
    g = toy_graph()
    cards = {Latent("blocks.0.hook_mlp_out", 5): card(), Latent("blocks.1.hook_resid_post", 7): card(latent=7)}
    source = to_dot(layout(g, cards=cards, annotations={"blocks.1.hook_resid_post/7@END": "names the IO"})).source
    assert "names the IO" in source and "#7   −1.00\\nsay" not in source
    assert "#5   −2.00\\nx" not in source and '#5   −2.00\\nsay \\"hi\\"' in source
    long = to_dot(layout(g, annotations={"blocks.0.hook_mlp_out/5@END": "a" * 80})).source
    assert "a" * 31 + "…" in long and "a" * 33 not in long


@needs_dot
def test_labels_cannot_break_the_dot_file(tmp_path):
    g = nasty_graph()
    files, missing = draw_graph(
        g, tmp_path / "graph", ("svg", "png"), cards={Latent("blocks.0.hook_mlp_out", 5): card()}
    )
    assert missing is None and {f.suffix for f in files} == {".dot", ".svg", ".png"}
    svg = (tmp_path / "graph.svg").read_text()
    assert "say &quot;hi&quot; &lt;b&gt;&amp;amp; \\ back\\slash" in svg  # the label, intact and escaped
    assert "@ &quot;&lt;\\" in svg and "t&quot;&lt;x&gt;" in svg  # a slot name and the task name
    check = subprocess.run(["dot", "-Tsvg", str(tmp_path / "graph.dot")], capture_output=True, text=True)
    assert check.returncode == 0 and not check.stderr


@needs_dot
def test_pictures_are_written_at_a_readable_size(tmp_path):
    files, missing = draw_graph(hierarchical_graph(), tmp_path / "g", ("png", "svg", "pdf"))
    assert missing is None and [f.suffix for f in files] == [".dot", ".png", ".svg", ".pdf"]
    png = (tmp_path / "g.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert 600 < width < 3000 and 400 < height < 3000
    assert (tmp_path / "g.svg").read_text().count('class="cluster"') == 7
    assert (tmp_path / "g.pdf").read_bytes()[:4] == b"%PDF"


def test_missing_dot_still_writes_the_dot_file(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    files, missing = draw_graph(toy_graph(), tmp_path / "graph", ("png",))
    assert [f.name for f in files] == ["graph.dot"] and "apt-get install graphviz" in missing
    with pytest.raises(pictures.CircuitsError, match="unknown image format 'gif'"):
        draw_graph(toy_graph(), tmp_path / "graph", ("gif",))


def test_empty_circuit_is_drawn_and_named():
    g = attach(nx.DiGraph(), CircuitRecord(task="ioi", metric="logit_diff", total_effect=0.1))
    g.add_node(METRIC, effect=0.1, kind="metric", layer=4)
    source = to_dot(layout(g)).source
    assert "the circuit is empty" in source and "cluster_s" not in source and layout(g).empty
    assert card_keys(g) == []


def test_card_keys_are_the_drawn_latents():
    g = toy_graph()
    assert (
        card_keys(g)
        == layout(g).card_keys
        == [
            Latent("blocks.0.hook_attn_out", 9),
            Latent("blocks.0.hook_mlp_out", 5),
            Latent("blocks.1.hook_resid_post", 7),
        ]
    )
    assert card_keys(g, PictureOptions(max_nodes=2)) == [
        Latent("blocks.0.hook_mlp_out", 5),
        Latent("blocks.1.hook_resid_post", 7),
    ]
    h = hierarchical_graph()
    drawn = {
        Latent(h.nodes[f.node]["hook"], f.latent) for s in layout(h).sites for f in s.features if f.latent is not None
    }
    assert set(card_keys(h)) == drawn and Latent("blocks.0.hook_mlp_out", 14) not in drawn
    assert len(card_keys(h, PictureOptions(per_site=1))) == 4


def test_embeddings_and_errors_do_not_set_the_colour_scale():
    g = toy_graph()  # embed@IO has the largest |effect| (3.0); the latents' largest is 2.0
    source = to_dot(layout(g)).source  # so mlp/5 is fully saturated: scale 2.0, not 3.0
    assert pictures._colour(-2.0, 2.0) in source and pictures._colour(-2.0, 3.0) not in source
    assert layout(g).colour_scale == 2.0


def test_picture_options_are_one_checked_value():
    assert PictureOptions() == PictureOptions(max_nodes=40, per_site=4, min_edge=0.05)
    opts = PictureOptions(max_nodes=3, per_site=2)
    assert PictureOptions.from_dict(opts.to_dict()) == opts
    assert layout(hierarchical_graph(), opts).title == layout(hierarchical_graph(), PictureOptions(3, 2)).title
    with pytest.raises(pictures.CircuitsError, match="^picture options: max_nodes must be at least 0, got -1$"):
        PictureOptions(max_nodes=-1)
    with pytest.raises(pictures.CircuitsError, match="picture options: per_site: expected an integer"):
        PictureOptions.from_dict({"per_site": 1.5})
