"""Annotation files: ``{"node id": "label"}``, labels that replace a drawn circuit's automatic
feature descriptions."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from circuits.core.errors import CircuitsError
from circuits.core.files import read_json


def load_annotations(path: str | Path, graph: nx.DiGraph, circuit: str | Path) -> dict[str, str]:
    """The labels in the annotation file ``path`` for ``graph`` (read from the file
    ``circuit``); one line for a file that is not an object, ids not in the circuit, or a
    label that is not text."""
    annotations = read_json(path, "annotation file")
    if not isinstance(annotations, dict):
        raise CircuitsError(f'annotation file {path}: expected {{"node id": "text"}}')
    unknown = [k for k in annotations if k not in graph]
    if unknown:
        raise CircuitsError(
            f"annotation file {path}: {len(unknown)} node id(s) not in the circuit "
            f"{circuit}: {', '.join(map(repr, unknown[:5]))}" + (" ..." if len(unknown) > 5 else "")
        )
    bad = [k for k, v in annotations.items() if not isinstance(v, str)]
    if bad:
        raise CircuitsError(f"annotation file {path}: the label of {bad[0]!r} must be a string")
    return annotations
