"""Matplotlib figures: the faithfulness curve of a validated circuit, and the two feature
rankings of a hierarchical circuit."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from circuits.core.files import write_atomic

if TYPE_CHECKING:
    from circuits.circuit.faithfulness import FaithfulnessCurve
    from circuits.circuit.record import HierarchyRecord


def plot_faithfulness(result: FaithfulnessCurve, path: str | Path, title: str = "") -> Path:
    """The faithfulness curve (F against the number of feature nodes, log x) with the
    random-circuit baseline, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result.curve
    sizes = [max(c.n_latents, 1) for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(sizes, [c.faithfulness for c in curve], "o-", label="circuit (top nodes by |effect|)")
    ax.plot(sizes, [c.random_faithfulness for c in curve], "s--", color="grey", label="random circuit, same size")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("feature nodes (error nodes kept alongside, see JSON)")
    ax.set_ylabel(f"faithfulness ({result.ablation} ablation)")
    ax.set_title(title or f"CPR {result.cpr:.2f}, CMD {result.cmd:.2f}, completeness {result.completeness:.2f}")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_rankings(hierarchy: HierarchyRecord, path: str | Path) -> Path:
    """A hierarchical circuit's feature level (its record's ``hierarchy``): F against
    latent + error nodes inside the site skeleton, attribution prefix vs optimised ranking,
    each with its random same-size baseline and its cut, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colours = {"attribution": "tab:blue", "optimised": "tab:orange"}
    for key, level in hierarchy.levels():
        if key not in colours:
            continue
        colour, sizes = colours[key], [max(c.size, 1) for c in level.curve]
        ax.plot(sizes, [c.faithfulness for c in level.curve], "o-", color=colour, label=f"{key} ranking")
        ax.plot(sizes, [c.random_faithfulness for c in level.curve], ":", color=colour, label=f"random ({key})")
        ax.axvline(level.size, color=colour, linewidth=0.8, linestyle="--")
    ax.axhline(hierarchy.target, color="green", linewidth=0.6, label=f"target {hierarchy.target}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel(f"latent + error nodes inside the {len(hierarchy.sites)} sites")
    ax.set_ylabel(f"faithfulness ({hierarchy.ablation} ablation, held-out)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return write_atomic(path, buffer.getvalue())
