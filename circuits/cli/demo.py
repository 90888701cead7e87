"""``demo``: the main job on the embedded default model, every output in one folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from circuits.cli.args import writable
from circuits.core.config import add_flag
from circuits.core.tables import print_table


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on the embedded default model",
        description="Load (or train on first use) the embedded model and SAEs, "
        "discover the IOI circuit, validate it, edit the model with it, "
        "and write every output (circuit.json, graph.png/svg, "
        "faithfulness.png, report.html, ...) to --out.",
    )
    p.add_argument("--out", default="outputs/ioi", help="output folder (default outputs/ioi)")
    add_flag(p, "--n", "circuits.demo:run_demo", "prompt pairs (discovery, and as many held out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from circuits.demo import run_demo

    start = time.perf_counter()
    result = run_demo(writable(Path(args.out)), n=args.n, progress=not args.quiet)
    print_demo(result)
    print(f"open {result.report} in a browser ({time.perf_counter() - start:.0f} s in all)")


def print_demo(result) -> None:
    """The circuit, both levels of it, what the edit moved, the steps' times and the files."""
    from circuits.circuit.graph import error_nodes, feature_nodes
    from circuits.circuit.record import record_of

    graph = result.graph
    g = record_of(graph)
    print(f"IOI on the embedded model: clean logit diff {g.clean_metric:.2f}, corrupt {g.corrupt_metric:.2f}")
    print(
        f"circuit: {len(feature_nodes(graph))} feature + {len(error_nodes(graph))} error nodes, "
        f"{graph.number_of_edges()} edges ({g.method}, {g.n_examples} pairs)"
    )
    h = g.hierarchy
    sl, fl = h.site_level, h.feature_level
    print(
        f"held-out prompts, {h.ablation} ablation, target F >= {h.target}:\n"
        f"  sites:    {sl.n_nodes} sites, faithfulness {sl.faithfulness:.3f}, completeness "
        f"{sl.completeness:.3f}, random same-size {sl.random_faithfulness:.3f}\n"
        f"  features: {fl.n_nodes} latents + {fl.n_error_nodes} error terms ({fl.ranking} ranking), "
        f"faithfulness {fl.faithfulness:.3f}, completeness {fl.completeness:.3f}, random same-size "
        f"{fl.random_faithfulness:.3f}" + ("" if h.reached_target else "  (target not reached)")
    )
    if h.family_level is not None:
        ml = h.family_level
        print(
            f"  families: {ml.n_nodes} of {len(h.families)} families + {ml.n_error_nodes} error terms, faithfulness "
            f"{ml.faithfulness:.3f}, random families {ml.random_faithfulness:.3f}; {h.feature_named_share:.0%} of the "
            "feature level's |effect| in families named by a task variable"
        )
    print()
    r = result.readability
    print(
        f"readable: {r.matched:.0%} of the circuit's |effect| in latents matched to a ground-truth concept "
        f"(F1 >= {r.threshold:g}), {r.unmatched:.0%} in other latents, {r.error:.0%} in error terms\n"
    )
    top, optimised = result.edits
    print_table(
        ["task", "top 100 features off: moved", f"optimised ({len(optimised.edit.features)} latents): moved"],
        [
            [name, f"{r.relative_change:+.1%}", f"{optimised.tasks[name].relative_change:+.1%}"]
            for name, r in top.tasks.items()
        ],
    )
    print("(held-out prompts; the share of each task's clean - corrupt range)")
    from circuits.cli.edit import print_collateral

    for e in result.edits:
        print(f"\n{e.edit.description}:", end="")
        print_collateral(e)
    if result.missing_dot:
        print(f"circuits: warning: {result.missing_dot}", file=sys.stderr)
    print()
    print_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in result.times.items()])
    print("\nfiles:\n  " + "\n  ".join(result.files))
