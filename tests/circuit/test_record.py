"""The circuit record: one to_dict / from_dict, the derived labels, circuit files written by
older code (tests/data: written by ``circuits discover`` at dfa0800 on a tiny 1-layer model
with 8-latent SAEs, ``--n 8 --method atp``; flat ``--top-n 6``, hierarchical
``--target-faithfulness 0.8 --ablation mean_corrupt --mask-steps 5``), bad fields."""

import json
import warnings
from dataclasses import replace
from pathlib import Path

import networkx as nx
import pytest

from circuits.circuit.graph import OldCircuitFile, load_graph, save_graph
from circuits.circuit.record import (
    CircuitRecord,
    CurvePointRecord,
    ExampleRecord,
    HeldOut,
    Pruning,
    Sources,
    attach,
    record_of,
)
from circuits.cli import main
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Site
from tests.helpers import example_graph, hierarchical_graph, level, with_record

DATA = Path(__file__).parents[1] / "data"
FLAT, HIERARCHICAL = DATA / "circuit-flat-dfa0800.json", DATA / "circuit-hierarchical-dfa0800.json"


def _full_record() -> CircuitRecord:
    """A record with every part set, nested levels with curves included."""
    h = record_of(hierarchical_graph()).hierarchy
    h = replace(
        h,
        attribution=replace(
            h.attribution, curve=[CurvePointRecord(1, 0, 0.2, 0.0), CurvePointRecord(11, 3, 0.92, 0.1)]
        ),
        mask_history=[(0, 1.5, 40), (5, 0.5, 12)],
        site_edges=[("blocks.0.hook_attn_out@END", "metric", -1.25)],
        held_out=HeldOut("ioi", n=16, seed=1),
    )
    return replace(
        record_of(example_graph()),
        n_examples=8,
        clean_metric=2.5,
        corrupt_metric=0.5,
        discover={"method": "ig", "steps": 10},
        times={"attribution (pass 1)": 1.5, "edges (pass 2)": 0.25},
        hierarchy=h,
        sources=Sources("ioi", 8, seed=3, metric="logit_diff"),
        pruning=Pruning(edge_threshold=0.5),
    )


def _load(path: Path) -> tuple[nx.DiGraph, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = load_graph(path)
    return graph, [str(w.message) for w in caught if issubclass(w.category, OldCircuitFile)]


def test_round_trip_through_json():
    record = _full_record()
    data = json.loads(json.dumps(record.to_dict()))
    assert CircuitRecord.from_dict(data) == record
    assert data["hierarchy"]["sites"][0] == {
        "id": "blocks.0.hook_attn_out@END",
        "hook": "blocks.0.hook_attn_out",
        "position": 4,
        "label": "END",
    }  # the keys older readers read
    assert data["example"]["top_outputs"] == [["Mary", 0.734], ["John", 0.0123]]
    bare = CircuitRecord(task="t").to_dict()
    assert not {"hierarchy", "sources", "pruning", "pruned_by_ablation"} & set(bare)  # absent, as before
    assert CircuitRecord.from_dict(bare) == CircuitRecord(task="t")


def test_a_circuit_file_round_trips_its_record(tmp_path):
    graph = attach(hierarchical_graph(), _full_record())
    back, notes = _load(save_graph(graph, tmp_path / "c.json"))
    assert record_of(back) == record_of(graph) and notes == []
    assert record_of(back).hierarchy.skeleton[0] == Site.at("blocks.0.hook_attn_out", 4)


def test_derived_labels():
    r = record_of(example_graph())
    assert r.answer_label() == "Mary vs John" and r.answer_label(repr) == "'Mary' vs 'John'"
    assert r.token(0) == "<bos>" and r.token(None) is None and r.token(99) is None
    assert r.per_position and r.n_positions == 15 and r.position_label(2) == "IO" and r.position_label(None) == "*"
    assert r.tokens()[:2] == ["<bos>", "When"]
    alone = replace(r, example=ExampleRecord(answer="Mary"), position_labels=None)
    assert alone.answer_label() == "Mary" and alone.tokens() == [] and not alone.per_position
    assert alone.position_label(3) == "p3" and CircuitRecord().answer_label() is None
    assert replace(r, example=None).tokens() == r.position_labels  # no example: the labels


def test_old_flat_file_loads_with_one_line_naming_what_is_missing():
    old = json.loads(FLAT.read_text())["graph"]
    graph, notes = _load(FLAT)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].endswith("is from an older sae-circuits: no times (left empty)") and str(FLAT) in notes[0]
    r = record_of(graph)
    assert (r.task, r.metric, r.n_examples, r.total_effect) == ("ioi", "logit_diff", 8, old["total_effect"])
    assert r.example.prompt_tokens == old["example"]["prompt_tokens"] and r.model.name == "toy"
    assert r.sources.n == 8 and r.pruning == Pruning() and r.times == {} and r.hierarchy is None


def test_old_hierarchical_file_loads_typed_and_writes_what_old_readers_read(tmp_path):
    old = json.loads(HIERARCHICAL.read_text())["graph"]
    graph, notes = _load(HIERARCHICAL)
    assert notes == []  # nothing missing: its step times moved to the record's
    r = record_of(graph)
    h = r.hierarchy
    assert r.times == old["hierarchy"]["times"] and list(r.times)[-1] == "edges (pass 2)"
    assert h.ablation == "mean_corrupt" and h.held_out == HeldOut("ioi", n=8, seed=1)
    assert h.site_level.n_nodes == len(h.sites)
    assert [s.id for s in h.skeleton] == [s["id"] for s in old["hierarchy"]["sites"]]
    assert h.feature_level.curve and all(isinstance(p, CurvePointRecord) for p in h.feature_level.curve)
    assert len(h.site_edges) == len(old["hierarchy"]["site_edges"])
    new = json.loads(save_graph(graph, tmp_path / "again.json").read_text())["graph"]
    old.pop("per_position")  # derived now
    old_h = old.pop("hierarchy")
    old_h.pop("times")
    assert {k: v for k, v in new.items() if k not in ("hierarchy", "times")} == old
    assert {k: v for k, v in new["hierarchy"].items()} == old_h  # the same keys and values


def test_an_older_file_names_every_missing_field_on_one_line(tmp_path):
    data = json.loads(HIERARCHICAL.read_text())
    g = data["graph"]
    for key in ("example", "n_candidate_nodes", "sources"):
        del g[key]
    del g["model"]["name"], g["hierarchy"]["site_edges"], g["hierarchy"]["held_out"], g["hierarchy"]["times"]
    path = tmp_path / "older.json"
    path.write_text(json.dumps(data))
    graph, notes = _load(path)
    assert len(notes) == 1
    assert notes[0].endswith(
        "no n_candidate_nodes, example, times, model.name, hierarchy.site_edges, hierarchy.held_out (left empty)"
    )
    r = record_of(graph)
    assert r.example is None and r.sources is None and r.hierarchy.held_out is None and r.model.n_layers == 1


def test_the_command_line_says_it_once(tmp_path, capsys):
    assert main(["export", "--circuit", str(FLAT), "--format", "json", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("circuits: note: circuit file") and err[0].endswith("no times (left empty)")
    )
    assert (
        main(["export", "--circuit", str(tmp_path / "c.json"), "--format", "json", "--out", str(tmp_path / "d")]) == 0
    )
    assert capsys.readouterr().err == ""  # the file written now has everything


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g.update(n_examples="eight"), ": n_examples: expected an integer, got 'eight'"),
        (lambda g: g.update(taks="ioi"), ": unknown circuit record field 'taks'"),
        (lambda g: g["model"].update(n_layers=1.5), ": model: n_layers: expected an integer, got 1.5"),
        (lambda g: g["example"].update(answer=3), ": example: answer: expected a string, got 3"),
        (
            lambda g: g["hierarchy"]["site_level"].update(faithfulness="high"),
            ": hierarchy: site_level: faithfulness: expected a number, got 'high'",
        ),
        (
            lambda g: g["hierarchy"]["sites"][0].update(hook="blocks.0.mlp"),
            ": hierarchy: sites[0]: hook 'blocks.0.mlp'",
        ),
        (lambda g: g["hierarchy"]["sites"][0].update(label="S9"), ": hierarchy: sites[0]: site 'blocks."),
        (lambda g: g["hierarchy"].pop("target"), ": hierarchy: missing field 'target'"),
        (lambda g: g["hierarchy"]["held_out"].update(seed=None), ": hierarchy: held_out: held-out prompts of ioi"),
        (
            lambda g: g.update(saes={"blocks.0.hook_mlp_out": True}),
            ": saes['blocks.0.hook_mlp_out']: expected an integer",
        ),
        (
            lambda g: g["hierarchy"].update(site_edges=[["a", "b"]]),
            ": hierarchy: site_edges[0]: expected 3 items, got 2",
        ),
    ],
)
def test_a_bad_field_is_one_line_naming_it(tmp_path, change, message):
    data = json.loads(HIERARCHICAL.read_text())
    change(data["graph"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitsError) as err:
        load_graph(path)
    text = str(err.value)
    assert text.startswith(f"circuit file {path}") and message in text and "\n" not in text


def test_graphs_carry_their_record():
    assert record_of(nx.DiGraph()) == CircuitRecord()  # a bare graph records nothing
    with pytest.raises(CircuitsError, match="^the graph's metadata is not a circuit record .*'task'"):
        record_of(nx.DiGraph(task="ioi"))  # the old in-memory layout
    with pytest.raises(CircuitsError, match="not a CircuitRecord"):
        record_of(nx.DiGraph(record={"task": "ioi"}))
    g = with_record(hierarchical_graph(), sources=Sources("ioi", 4))
    assert record_of(g).sources == Sources("ioi", 4) and record_of(g).hierarchy.reached_target
    h = record_of(g).hierarchy
    assert [k for k, _ in h.levels()] == ["sites", "attribution", "optimised"]
    assert [k for k, _ in replace(h, optimised=None).levels()] == ["sites", "attribution"]
    assert not replace(h, feature_level=level(9, 0.5)).reached_target
