"""Exports: pictures (escaping, missing dot, empty circuit), GraphML, circuit-tracer JSON, and
the HTML report rendered in headless Chromium."""

import json
import shutil
import subprocess

import networkx as nx
import pytest

from circuits import export
from circuits.export import FeatureCard, draw_graph, to_circuit_tracer, to_dot, write_graphml, write_report
from circuits.graph import METRIC, node_attrs
from tests.helpers import toy_graph

NASTY = 'say "hi" <b>&amp; \\ back\\slash'


def nasty_graph() -> nx.DiGraph:
    g = toy_graph()
    g.graph.update(task='t"<x>', metric="logit_diff", total_effect=-3.0, saes={"blocks.0.hook_mlp_out": 8},
                   position_labels=["a", "b"])
    g.add_node('blocks.0.hook_mlp_out/6@"<\\', **node_attrs("blocks.0.hook_mlp_out", 6, 1, '"<\\', -0.5, 1.0))
    g.add_edge('blocks.0.hook_mlp_out/6@"<\\', "blocks.1.hook_resid_post/7@END", weight=-0.2)
    return g


def card(hook="blocks.0.hook_mlp_out", latent=5) -> FeatureCard:
    return FeatureCard(hook, latent, [{"tokens": ["x", NASTY, "</div>"], "index": 1, "activation": 1.5}],
                       [1, 0, 2], 1.5, 0.1, [("<script>", 0.5)], [("\\", -0.4)])


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed (make test installs it)")
def test_labels_cannot_break_the_dot_file(tmp_path):
    g = nasty_graph()
    files, missing = draw_graph(g, tmp_path / "graph", ("svg", "png"), cards={("blocks.0.hook_mlp_out", 5): card()})
    assert missing is None and {f.suffix for f in files} == {".dot", ".svg", ".png"}
    svg = (tmp_path / "graph.svg").read_text()
    assert "say &quot;hi&quot; &lt;b&gt;&amp;amp; \\ back\\slash" in svg  # the label, intact and escaped
    assert "@&quot;&lt;\\" in svg
    check = subprocess.run(["dot", "-Tsvg", str(tmp_path / "graph.dot")], capture_output=True, text=True)
    assert check.returncode == 0 and not check.stderr


def test_drawing_caps_the_nodes_and_says_so():
    g = toy_graph()
    for i in range(60):
        g.add_node(f"blocks.0.hook_attn_out/{i}@p", **node_attrs("blocks.0.hook_attn_out", i, 0, "p", -0.01 * i, 1.0))
    source = to_dot(g, max_nodes=10).source
    assert "10 strongest nodes shown, 55 hidden" in source
    assert source.count("shape=box") + source.count("shape=invhouse") >= 10


def test_missing_dot_still_writes_the_dot_file(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    files, missing = draw_graph(toy_graph(), tmp_path / "graph", ("png",))
    assert [f.name for f in files] == ["graph.dot"] and "apt-get install graphviz" in missing
    with pytest.raises(export.CircuitsError, match="unknown image format 'gif'"):
        draw_graph(toy_graph(), tmp_path / "graph", ("gif",))


def test_empty_circuit_is_drawn_and_named(tmp_path):
    g = nx.DiGraph(task="ioi", metric="logit_diff", total_effect=0.1)
    g.add_node(METRIC, effect=0.1, kind="metric", layer=4)
    assert "the circuit is empty" in to_dot(g).source
    html = write_report(tmp_path / "r.html", g).read_text()
    assert "The circuit is empty" in html


def test_graphml_round_trip(tmp_path):
    g = nasty_graph()
    back = nx.read_graphml(write_graphml(g, tmp_path / "c.graphml"))
    assert set(back.nodes) == set(g.nodes) and set(back.edges) == set(g.edges)
    assert back.nodes["embed@IO"]["latent"] == "" and back.nodes["blocks.0.hook_mlp_out/5@END"]["latent"] == 5
    assert json.loads(back.graph["position_labels"]) == ["a", "b"]


def test_circuit_tracer_schema():
    data = to_circuit_tracer(nasty_graph(), cards={("blocks.0.hook_mlp_out", 5): card()})
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids))
    assert all({"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"} <= set(n)
               for n in data["nodes"])
    assert {n["feature_type"] for n in data["nodes"]} == {"embedding", "cross layer transcoder",
                                                         "mlp reconstruction error", "logit"}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1


def test_report_escapes_text(tmp_path):
    html = write_report(tmp_path / "r.html", nasty_graph(), cards={("blocks.0.hook_mlp_out", 5): card()}).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;/div&gt;" in html  # a token that looks like markup stays text
    assert "say &quot;hi&quot; &lt;b&gt;&amp;amp;" in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when it can)")
def test_report_renders_in_headless_chromium(tmp_path):
    svg_dir = tmp_path / "g"
    draw_graph(nasty_graph(), svg_dir / "graph", ("svg", "png"))
    svg = (svg_dir / "graph.svg").read_text() if (svg_dir / "graph.svg").exists() else None
    report = write_report(tmp_path / "report.html", nasty_graph(), svg[svg.index("<svg"):] if svg else None,
                          cards={("blocks.0.hook_mlp_out", 5): card()}, faithfulness_png=svg_dir / "graph.png")
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Feature circuit:" in dom and "<svg" in dom and "Feature cards" in dom
