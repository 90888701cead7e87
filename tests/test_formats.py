"""Data formats: GraphML round trip and circuit-tracer's frontend JSON."""

import json

import networkx as nx

from circuits.formats import to_circuit_tracer, write_circuit_tracer, write_graphml
from tests.helpers import card, nasty_graph


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
    assert all(
        {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"} <= set(n) for n in data["nodes"]
    )
    assert {n["feature_type"] for n in data["nodes"]} == {
        "embedding",
        "cross layer transcoder",
        "mlp reconstruction error",
        "logit",
    }
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1


def test_write_circuit_tracer_writes_the_json(tmp_path):
    cards = {("blocks.0.hook_mlp_out", 5): card()}
    path = write_circuit_tracer(nasty_graph(), tmp_path / "c.circuit-tracer.json", cards)
    assert json.loads(path.read_text()) == json.loads(json.dumps(to_circuit_tracer(nasty_graph(), cards=cards)))
