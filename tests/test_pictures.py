"""Pictures: labels escaped for DOT, the node cap, a missing dot binary, the empty circuit, and
which latents get feature cards."""

import shutil
import subprocess

import networkx as nx
import pytest

from circuits import pictures
from circuits.graph import METRIC
from circuits.pictures import card_keys, draw_graph, to_dot
from tests.helpers import card, nasty_graph, node_attrs, toy_graph


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
    with pytest.raises(pictures.CircuitsError, match="unknown image format 'gif'"):
        draw_graph(toy_graph(), tmp_path / "graph", ("gif",))


def test_empty_circuit_is_drawn_and_named():
    g = nx.DiGraph(task="ioi", metric="logit_diff", total_effect=0.1)
    g.add_node(METRIC, effect=0.1, kind="metric", layer=4)
    assert "the circuit is empty" in to_dot(g).source


def test_card_keys_are_the_drawn_latents():
    g = toy_graph()
    assert card_keys(g) == [
        ("blocks.0.hook_attn_out", 9),
        ("blocks.0.hook_mlp_out", 5),
        ("blocks.1.hook_resid_post", 7),
    ]
    assert card_keys(g, max_nodes=2) == [("blocks.0.hook_mlp_out", 5)]  # embed@IO and mlp/5 are the strongest


def test_embeddings_do_not_set_the_colour_scale():
    g = toy_graph()  # embed@IO has the largest |effect| (3.0); the SAE nodes' largest is 2.0
    source = to_dot(g).source  # so mlp/5 is fully saturated: scale 2.0, not 3.0
    assert pictures._colour(-2.0, 2.0) in source and pictures._colour(-2.0, 3.0) not in source
