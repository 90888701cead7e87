"""Annotation files: ``{"node id": "label"}`` JSON whose labels replace the automatic feature
descriptions in a circuit's picture (``pictures.layout(..., annotations=...)``); a key that is
a family id of the circuit (``"F3"``) renames that family (``rename_families``)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import networkx as nx

from circuits.circuit.record import attach, record_of
from circuits.core.errors import CircuitsError
from circuits.core.files import read_json

SHOWN = 5  # unknown node ids named in the error
FAMILY_ID = re.compile(r"F\d+")


def load_annotations(path: str | Path, graph: nx.DiGraph, circuit: str | Path | None = None) -> dict[str, str]:
    """The labels in the annotation file ``path`` for the nodes of ``graph`` (read from the
    file ``circuit``, named in the errors). A file that is not a JSON object, names nodes the
    circuit lacks or gives a label that is not text is a one-line `CircuitsError`."""
    annotations = read_json(path, "annotation file")
    if not isinstance(annotations, dict):
        raise CircuitsError(f'annotation file {path}: expected {{"node id": "text"}}')
    h = record_of(graph).hierarchy
    families = {f.id for f in h.families} if h is not None else set()
    for k in annotations:
        if FAMILY_ID.fullmatch(k) and k not in graph and k not in families:
            known = ", ".join(sorted(families, key=lambda f: int(f[1:]))[:SHOWN]) or "none: it has no families"
            raise CircuitsError(f"annotation file {path}: the circuit has no family {k!r} (its families: {known})")
    unknown = [k for k in annotations if k not in graph and k not in families]
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


def rename_families(graph: nx.DiGraph, annotations: dict[str, str]) -> nx.DiGraph:
    """``graph`` with the families ``annotations`` names (by id) renamed; unchanged without."""
    h = record_of(graph).hierarchy
    if h is None or not any(f.id in annotations for f in h.families):
        return graph
    families = [replace(f, name=annotations.get(f.id, f.name)) for f in h.families]
    out = graph.copy()
    return attach(out, replace(record_of(graph), hierarchy=replace(h, families=families)))
