"""Edits of one circuit side by side, on held-out prompts (seed 1) and held-out toy-corpus text:
the searched latent edit (`optimise_edit`, gradient search), the top-k edit of the same size
and the top-100 edit (features by circuit effect, zero where the circuit uses them), optionally
the family search, each beside a random edit of its size. Prints a markdown table; `--json
PATH` also writes the reports.

Run: `.venv/bin/python benchmarks/edits.py --circuit DIR/circuit.json [--families] [--steps 200]`
(DIR from `circuits discover --task T --target-faithfulness 0.9 --out DIR`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from circuits.circuit.edit import circuit_edit, edit_report
from circuits.circuit.edit_search import GateSchedule, optimise_edit
from circuits.circuit.graph import load_graph
from circuits.circuit.record import record_of
from circuits.core.tables import print_table
from circuits.loaders import load_model, load_saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuit", required=True)
    parser.add_argument("--action", default="zero", choices=("zero", "mean"), help="for the searches")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--families", action="store_true", help="also the family search (budget 5)")
    parser.add_argument("--json", help="also write the reports here")
    args = parser.parse_args()

    graph = load_graph(args.circuit)
    task = record_of(graph).task
    model = load_model("toy", progress=False)
    saes = load_saes("toy", model, progress=False)
    start = time.perf_counter()
    searched, _ = optimise_edit(graph, model, saes, task, action=args.action, schedule=GateSchedule(steps=args.steps))
    seconds = time.perf_counter() - start
    edits = {
        f"searched latents ({args.action})": searched,
        f"top {len(searched.features)} by effect (zero)": circuit_edit(graph, model, saes, len(searched.features)),
        "top 100 by effect (zero)": circuit_edit(graph, model, saes, 100),
    }
    if args.families:
        families, _ = optimise_edit(graph, model, saes, task, units="families", action=args.action)
        edits[f"searched families ({args.action})"] = families
    reports = {name: edit_report(model, saes, e, task, n=256, seed=1, n_completions=0) for name, e in edits.items()}
    tasks = list(next(iter(reports.values())).tasks)
    rows = []
    for name, r in reports.items():
        for label, rep in ((name, r), ("  random, same size", r.random)):
            left = rep.tasks[task].left
            rows.append(
                [
                    label,
                    len(rep.edit.features),
                    *(f"{rep.tasks[t].relative_change:+.1%}" for t in tasks),
                    "-" if left is None else f"{left:.1%}",
                    f"{rep.collateral.tpp:+.3f}",
                    f"{rep.collateral.text_of('all').kl:.4f}",
                ]
            )
    print(f"{task}: the latent search took {seconds:.0f} s; held-out prompts (seed 1, 256 each) and text:")
    print_table(["edit", "latents", *(f"{t} moved" for t in tasks), f"{task} left", "TPP", "text KL"], rows)
    if args.json:
        Path(args.json).write_text(json.dumps({n: r.to_dict() for n, r in reports.items()}, indent=1))


if __name__ == "__main__":
    main()
