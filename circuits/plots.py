"""Matplotlib figures: the faithfulness curve of a validated circuit."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from circuits.files import write_atomic

if TYPE_CHECKING:
    from circuits.ablation import FaithfulnessCurve


def plot_faithfulness(result: FaithfulnessCurve, path: str | Path, title: str = "") -> Path:
    """The faithfulness curve (F against the number of feature nodes, log x) with the
    random-circuit baseline, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result.curve
    sizes = [max(c.n_nodes, 1) for c in curve]
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
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    path = write_atomic(path, buffer.getvalue())
    return path
