"""Annotation files: labels by node id, checked against the circuit in one line."""

import json

import pytest

from circuits.core.errors import CircuitsError
from circuits.export.annotations import load_annotations
from tests.helpers import toy_graph


def test_annotations_are_labels_of_the_circuits_nodes(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"blocks.0.hook_mlp_out/5@END": "names the IO"}))
    assert load_annotations(path, toy_graph()) == {"blocks.0.hook_mlp_out/5@END": "names the IO"}


@pytest.mark.parametrize(
    "text,message",
    [
        ("[", "annotation file .*ann.json"),
        ("[1]", 'expected {"node id": "text"}'),
        (
            json.dumps({f"n{i}": "x" for i in range(7)}),
            r"7 node id\(s\) not in the circuit c.json: 'n0', .*'n4' \.\.\.$",
        ),
        (json.dumps({"blocks.0.hook_mlp_out/5@END": 3}), "the label of 'blocks.0.hook_mlp_out/5@END' must be a string"),
    ],
)
def test_bad_annotation_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with pytest.raises(CircuitsError, match=message) as err:
        load_annotations(path, toy_graph(), "c.json")
    assert "\n" not in str(err.value)
