"""sae-circuits: the circuits inside transformer language models, in SAE features.

The public API, six names; each is imported on first use, so ``import circuits`` (and the
command line's ``--help``) loads no torch::

    from circuits import load, make_task, discover, load_circuit, record_of, Edit

    model, saes = load("toy")                      # a model and its SAE set, by name
    task = make_task("ioi", model.tokenizer, n=128)
    held_out = make_task("ioi", model.tokenizer, n=128, seed=1)
    graph = discover(model, saes, task, target_faithfulness=0.9, held_out=held_out)
    record_of(graph).hierarchy.feature_level       # the typed record of the circuit

Everything else lives in the stage subpackages (docs/design.md, "Data flow"): ``core``,
``toy``, ``attribution``, ``circuit``, ``export``, ``load``, ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> the module that defines it
API = {
    "load": "circuits.loaders",
    "make_task": "tasks.builtin",
    "discover": "circuits.circuit.discover",
    "load_circuit": "circuits.circuit.graph",
    "record_of": "circuits.circuit.record",
    "Edit": "circuits.circuit.edit",
}
__all__ = ["load", "make_task", "discover", "load_circuit", "record_of", "Edit"]  # = API

if TYPE_CHECKING:
    from circuits.circuit.discover import discover
    from circuits.circuit.edit import Edit
    from circuits.circuit.graph import load_circuit
    from circuits.circuit.record import record_of
    from circuits.loaders import load
    from tasks.builtin import make_task


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'circuits' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
