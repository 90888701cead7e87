"""Annotation files: ``{"node id": "label"}`` JSON whose labels replace the automatic feature
descriptions in a circuit's picture (``pictures.layout(..., annotations=...)``)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from circuits.core.errors import CircuitsError
from circuits.core.files import read_json

SHOWN = 5  # unknown node ids named in the error


def load_annotations(path: str | Path, graph: nx.DiGraph, circuit: str | Path | None = None) -> dict[str, str]:
    """The labels in the annotation file ``path`` for the nodes of ``graph`` (read from the
    file ``circuit``, named in the errors). A file that is not a JSON object, names nodes the
    circuit lacks or gives a label that is not text is a one-line `CircuitsError`."""
    annotations = read_json(path, "annotation file")
    if not isinstance(annotations, dict):
        raise CircuitsError(f'annotation file {path}: expected {{"node id": "text"}}')
    unknown = [k for k in annotations if k not in graph]
    if unknown:
        where = f" {circuit}" if circuit is not None else ""
        raise CircuitsError(
            f"annotation file {path}: {len(unknown)} node id(s) not in the circuit{where}: "
            f"{', '.join(map(repr, unknown[:SHOWN]))}" + (" ..." if len(unknown) > SHOWN else "")
        )
    bad = [k for k, v in annotations.items() if not isinstance(v, str)]
    if bad:
        raise CircuitsError(f"annotation file {path}: the label of {bad[0]!r} must be a string")
    return annotations
