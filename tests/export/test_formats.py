"""Data formats: GraphML round trip and circuit-tracer's frontend JSON."""

import json

import networkx as nx
import pytest

from circuits.core.errors import CircuitsError
from circuits.core.vocab import Latent
from circuits.export.circuit_tracer import cantor, ct_influence, to_circuit_tracer, uncantor, write_circuit_tracer
from circuits.export.graphml import write_graphml
from tests.helpers import EXAMPLE_TOKENS, card, example_graph, nasty_graph, toy_graph


def test_graphml_round_trip(tmp_path):
    g = nasty_graph()
    back = nx.read_graphml(write_graphml(g, tmp_path / "c.graphml"))
    assert set(back.nodes) == set(g.nodes) and set(back.edges) == set(g.edges)
    assert back.nodes["embed@IO"]["latent"] == "" and back.nodes["blocks.0.hook_mlp_out/5@END"]["latent"] == 5
    assert json.loads(back.graph["position_labels"]) == ["a", "b"]


def test_graphml_has_gephi_labels(tmp_path):
    back = nx.read_graphml(write_graphml(toy_graph(), tmp_path / "c.graphml"))
    assert back.nodes["blocks.0.hook_mlp_out/5@END"]["label"] == "L0 mlp 5 @END"
    assert back.nodes["blocks.1.hook_resid_post/err@END"]["label"] == "L1 resid err @END"
    assert back.nodes["embed@IO"]["label"] == "embed @IO" and back.nodes["metric"]["label"] == "metric"
    assert back.nodes["embed@IO"]["abs_effect"] == 3.0
    assert back.edges["blocks.1.hook_resid_post/err@END", "metric"]["abs_weight"] == 0.5


def test_circuit_tracer_schema():
    data = to_circuit_tracer(nasty_graph(), cards={Latent("blocks.0.hook_mlp_out", 5): card()})
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
    assert data["metadata"]["schema_version"] == 1 and data["metadata"]["slug"] == "t-x"  # from the task 't"<x>'
    feature = next(n for n in data["nodes"] if n["node_id"] == "blocks.0.hook_mlp_out/5@END")
    assert feature["clerp"].startswith(card().description) and feature["activation"] == 1.0


def test_circuit_tracer_feature_is_cantor_of_row_and_latent():
    assert [uncantor(cantor(x, y)) for x, y in [(0, 0), (5, 7), (35, 1 << 20)]] == [(0, 0), (5, 7), (35, 1 << 20)]
    assert len({cantor(x, y) for x in range(40) for y in range(40)}) == 1600
    data = to_circuit_tracer(example_graph())
    rows = data["metadata"]["transcoder_list"]
    for node in data["nodes"]:
        if node["feature_type"] == "cross layer transcoder":
            row, latent = uncantor(node["feature"])
            assert str(row) == node["layer"] and node["node_id"].split("@")[0] == f"{rows[row]}/{latent}"
    by_id = {n["node_id"]: n for n in data["nodes"]}
    assert by_id["blocks.0.hook_attn_out/9@S2"]["layer"] == "0"  # 3 x block + 0 attn, 1 mlp, 2 resid
    assert by_id["blocks.0.hook_mlp_out/5@END"]["layer"] == "1"
    assert by_id["blocks.1.hook_resid_post/7@END"]["layer"] == by_id["blocks.1.hook_resid_post/err@END"]["layer"] == "5"
    assert rows[5] == "blocks.1.hook_resid_post" and by_id["metric"]["layer"] == "6"
    assert by_id["blocks.1.hook_resid_post/err@END"]["feature"] == -1


def test_circuit_tracer_influence_is_a_cumulative_share_of_abs_effect():
    graph = example_graph()
    graph.add_node("tie", **dict(graph.nodes["blocks.0.hook_mlp_out/5@END"], position=3, pos_label="and"))
    influence = ct_influence(graph)
    assert set(influence) == set(graph) - {"metric"} and all(0 < v <= 1 for v in influence.values())
    by_effect = sorted(influence, key=lambda n: -abs(graph.nodes[n]["effect"]))
    assert [influence[n] for n in by_effect] == sorted(influence.values())  # larger |effect|, smaller influence
    assert influence["tie"] == influence["blocks.0.hook_mlp_out/5@END"] == pytest.approx((3 + 2 + 2) / 8.6)
    assert influence["embed@IO"] == pytest.approx(3 / 8.6) and max(influence.values()) == 1.0
    data = to_circuit_tracer(graph)
    assert data["metadata"]["node_threshold"] == 1.0  # the slider starts with every node shown
    assert all(0 <= n["influence"] <= 1 for n in data["nodes"] if n["feature_type"] != "logit")
    flat = nx.DiGraph()
    flat.add_node("a", **graph.nodes["embed@IO"] | {"effect": 0.0})
    assert ct_influence(flat) == {"a": 1.0}


def test_circuit_tracer_one_embedding_per_prompt_token():
    data = to_circuit_tracer(example_graph())
    embeddings = sorted((n["ctx_idx"], n["node_id"]) for n in data["nodes"] if n["feature_type"] == "embedding")
    assert [pos for pos, _ in embeddings] == list(range(len(EXAMPLE_TOKENS)))
    assert data["metadata"]["prompt_tokens"] == EXAMPLE_TOKENS  # the example's tokens, not slot names
    assert ("embed@IO" in dict(embeddings).values()) and dict(embeddings)[0] == "embed@BOS"
    old = to_circuit_tracer(nasty_graph())  # no example: position labels, then p<i>
    assert old["metadata"]["prompt_tokens"][:3] == ["a", "b", "p2"] and len(old["metadata"]["prompt_tokens"]) == 15
    assert to_circuit_tracer(example_graph(), prompt_tokens=list("x" * 15))["metadata"]["prompt_tokens"] == ["x"] * 15


def _parse_logit_label(clerp: str) -> tuple[str, float]:
    """What circuit-tracer's frontend reads from a logit node's clerp (util-cg.js)."""
    return clerp.split('"')[1], float(clerp.split("(p=")[1].split(")")[0])


def test_circuit_tracer_logit_labels_are_parseable():
    logits = [n for n in to_circuit_tracer(example_graph())["nodes"] if n["feature_type"] == "logit"]
    assert [(n["node_id"], n["is_target_logit"]) for n in logits] == [("metric", True), ("wrong_answer", False)]
    assert [_parse_logit_label(n["clerp"]) for n in logits] == [("Mary", 0.734), ("John", 0.012)]
    assert logits[0]["clerp"] == 'Output "Mary" (p=0.734)' and logits[0]["token_prob"] == 0.734
    (old,) = [n for n in to_circuit_tracer(nasty_graph())["nodes"] if n["feature_type"] == "logit"]
    assert _parse_logit_label(old["clerp"]) == ("logit_diff, p unknown", 0.0)


def test_circuit_tracer_links_are_contributions():
    data = to_circuit_tracer(example_graph())
    weights = {(link["source"], link["target"]): link["weight"] for link in data["links"]}
    assert weights["blocks.1.hook_resid_post/7@END", "metric"] == 1.0  # our -1.0: the behaviour relies on it
    assert weights["blocks.1.hook_resid_post/err@END", "metric"] == -0.5


@pytest.mark.parametrize("slug", ["a/b", "a b", "x?y", "..", ".hidden", "", "graph-metadata", "é", "x" * 201])
def test_circuit_tracer_bad_slug_is_one_line(slug, tmp_path):
    with pytest.raises(CircuitsError) as err:
        write_circuit_tracer(example_graph(), tmp_path, slug=slug)
    message = str(err.value)
    assert repr(slug) in message and "letters, digits" in message and "\n" not in message
    assert not any(tmp_path.iterdir())


def test_write_circuit_tracer_writes_the_folder_and_merges_metadata(tmp_path):
    cards = {Latent("blocks.0.hook_mlp_out", 5): card()}
    (tmp_path / "graph-metadata.json").write_text(json.dumps({"graphs": [{"slug": "other", "prompt": "x"}]}))
    files = write_circuit_tracer(nasty_graph(), tmp_path, cards, slug="ioi")
    assert files == [tmp_path / "ioi.json", tmp_path / "graph-metadata.json"]
    assert json.loads(files[0].read_text()) == json.loads(
        json.dumps(to_circuit_tracer(nasty_graph(), cards=cards, slug="ioi"))
    )
    write_circuit_tracer(example_graph(), tmp_path, slug="second")
    write_circuit_tracer(example_graph(), tmp_path, slug="ioi")  # replaces the entry in place
    graphs = json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]
    assert [g["slug"] for g in graphs] == ["other", "ioi", "second"]
    assert graphs[1]["prompt_tokens"] == EXAMPLE_TOKENS and graphs[0] == {"slug": "other", "prompt": "x"}
    (tmp_path / "graph-metadata.json").write_text("[]")
    with pytest.raises(CircuitsError, match="expected"):
        write_circuit_tracer(example_graph(), tmp_path, slug="ioi")


def test_circuit_tracer_rows_follow_a_released_sets_hooks():
    # gpt2-small-res-jb's kinds: an SAE on the embeddings, resid_pre, the last resid_post
    from circuits.circuit.config import DiscoverConfig
    from circuits.circuit.discover import discover
    from circuits.core.vocab import EMBED_HOOK
    from tasks.builtin import make_task
    from tests.helpers import TOK, random_saes, tiny_hooked_model

    hooks = [EMBED_HOOK, "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    graph = discover(
        tiny_hooked_model(),
        random_saes(hooks),
        make_task("ioi", TOK, n=4, split="train"),
        DiscoverConfig(method="atp", top_n=40),
        progress=False,
    )
    data = to_circuit_tracer(graph)
    assert data["metadata"]["transcoder_list"] == hooks
    features = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert {n["layer"] for n in features} <= {"0", "1", "2"}
    # the embeddings' latents are features on row 0; the token axis keeps one embedding each
    assert any(n["layer"] == "0" for n in features)
    embeddings = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert len({n["ctx_idx"] for n in embeddings}) == len(embeddings)
    assert next(n for n in data["nodes"] if n["node_id"] == "metric")["layer"] == "3"


def test_families_are_circuit_tracer_supernodes_and_graphml_attributes(tmp_path):
    from circuits.circuit.record import record_of
    from tests.helpers import families_graph

    g = families_graph()
    q = to_circuit_tracer(g)["qParams"]
    families = record_of(g).hierarchy.families
    assert q["supernodes"] == [[f"{f.id} {f.name}", *f.members] for f in families]
    assert q["pinnedIds"] == [m for f in families for m in f.members]
    assert to_circuit_tracer(example_graph())["qParams"]["supernodes"] == []  # no families, no supernodes
    back = nx.read_graphml(write_graphml(g, tmp_path / "c.graphml"))
    assert back.nodes["blocks.0.hook_mlp_out/10@END"]["family"] == "F1"
