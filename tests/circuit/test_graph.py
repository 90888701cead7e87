"""The circuit graph: ids, pruning, JSON round trip, bad files."""

import json
from dataclasses import replace

import pytest

from circuits.circuit.graph import METRIC, error_nodes, feature_nodes, load_graph, prune, save_graph
from circuits.circuit.record import Pruning, SiteRecord, record_of
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Node
from tests.helpers import hierarchical_graph, toy_graph, with_record


def test_prune_drops_nodes_without_a_path_to_the_metric():
    g = prune(toy_graph())
    assert "blocks.0.hook_attn_out/9@S2" not in g
    assert set(g) == {
        "embed@IO",
        "blocks.0.hook_mlp_out/5@END",
        "blocks.1.hook_resid_post/7@END",
        "blocks.1.hook_resid_post/err@END",
        METRIC,
    }
    assert feature_nodes(g) and error_nodes(g) == ["blocks.1.hook_resid_post/err@END"]


def test_prune_thresholds():
    g = toy_graph()
    assert set(prune(g, node_threshold=1.5)) == {METRIC}  # embed and mlp/5 no longer reach the metric
    assert set(prune(g, node_threshold=0.75)) == {
        "embed@IO",
        "blocks.0.hook_mlp_out/5@END",
        "blocks.1.hook_resid_post/7@END",
        METRIC,
    }
    assert set(prune(g, top_n=3)) == {
        "embed@IO",
        "blocks.0.hook_mlp_out/5@END",
        "blocks.1.hook_resid_post/7@END",
        METRIC,
    }
    # |effects| 3, 2, 1, 0.5, 0.1 (total 6.6): 80% needs the three largest
    assert len(prune(g, cumulative=0.8)) == 4
    cut = prune(g, edge_threshold=1.0)
    assert set(cut) == {"blocks.1.hook_resid_post/7@END", METRIC}
    assert record_of(cut).pruning == Pruning(edge_threshold=1.0)
    assert g.number_of_nodes() == 6  # prune is pure
    with pytest.raises(CircuitsError, match="cumulative fraction"):
        prune(g, cumulative=1.5)


def test_json_round_trip(tmp_path):
    g = prune(toy_graph())
    path = save_graph(g, tmp_path / "sub" / "circuit.json")
    back = load_graph(path)
    assert set(back.nodes) == set(g.nodes) and set(back.edges) == set(g.edges)
    assert back.nodes["embed@IO"] == g.nodes["embed@IO"]
    assert back.edges["blocks.1.hook_resid_post/7@END", METRIC]["weight"] == -1.0
    assert record_of(back).task == "toy"
    assert not list(tmp_path.glob("sub/.circuit.json*")), "no temporary file left behind"


def test_bad_circuit_files(tmp_path):
    with pytest.raises(CircuitsError, match="does not exist"):
        load_graph(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CircuitsError, match="bad.json: not JSON"):
        load_graph(bad)
    bad.write_text(json.dumps({"nodes": []}))
    with pytest.raises(CircuitsError, match="not a sae-circuits graph"):
        load_graph(bad)
    good = save_graph(toy_graph(), tmp_path / "c.json")
    data = json.loads(good.read_text())
    del data["edges"][0]["weight"]
    bad.write_text(json.dumps(data))
    with pytest.raises(CircuitsError, match="has no 'weight'"):
        load_graph(bad)


def test_site_graph_sums_node_edges_between_sites():
    from circuits.circuit.graph import site_graph

    g = toy_graph()
    sites = site_graph(g)
    node_sites = {n: Node.from_attrs(a).site.id for n, a in g.nodes(data=True) if n != METRIC} | {METRIC: METRIC}
    expected: dict = {}
    for u, v, w in g.edges(data="weight"):
        key = (node_sites[u], node_sites[v])
        expected[key] = expected.get(key, 0.0) + w
    assert {(u, v): w for u, v, w in sites.edges(data="weight")} == pytest.approx(expected)
    for site in set(node_sites.values()) - {METRIC}:
        members = [n for n, s in node_sites.items() if s == site]
        assert sites.nodes[site]["nodes"] == len(members)
        assert sites.nodes[site]["effect"] == pytest.approx(sum(g.nodes[n]["effect"] for n in members))
    skeleton = [SiteRecord("blocks.3.hook_mlp_out@END", "blocks.3.hook_mlp_out", 2, "END")]
    with_record(g, hierarchy=replace(record_of(hierarchical_graph()).hierarchy, sites=skeleton))
    assert site_graph(g).nodes["blocks.3.hook_mlp_out@END"]["nodes"] == 0  # a skeleton site with no kept node
