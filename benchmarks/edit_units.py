"""Edits of single latents instead of whole families: each latent of a circuit's feature level
(those the behaviour relies on) scored alone by the edit search's objective on the
optimisation data (seed-0 prompts of every built-in task, retain text), ranked by that score,
and the top-k prefixes checked on held-out prompts (seed 1) and held-out text. Prints a
markdown table; `--json PATH` also writes JSON.

Run: `.venv/bin/python benchmarks/edit_units.py --circuit DIR/circuit.json [--action mean] [--k 10 20 30 50]`
(DIR from `circuits discover --task ioi --target-faithfulness 0.9 --out DIR`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from circuits.circuit.edit import Edit, FeatureEdit, edit_report, mean_activations
from circuits.circuit.edit_search import Objective
from circuits.circuit.graph import load_graph, nodes_of
from circuits.circuit.record import record_of
from circuits.core.tables import print_table
from circuits.loaders import load_model, load_saes
from tasks.builtin import BUILTIN_TASKS, make_task
from tasks.corpus import corpus_tokens


def latent_edits(graph, action: str, means) -> list[FeatureEdit]:
    """The circuit's latents with a negative effect, each edited where the circuit uses it."""
    record = record_of(graph)
    out = []
    for n, node in nodes_of(graph).items():
        if node.latent is None or node.is_embed or graph.nodes[n]["effect"] >= 0:
            continue
        value = None if action == "zero" else float(means[node.hook][node.latent])
        where = None if node.position is None else [node.position - record.n_positions]
        out.append(FeatureEdit(node.hook, node.latent, action, value, where))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuit", required=True)
    parser.add_argument("--action", default="mean", choices=("zero", "mean"))
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 30, 50])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    graph = load_graph(args.circuit)
    task_name = record_of(graph).task
    model = load_model("toy", progress=False)
    saes = load_saes("toy", model, progress=False)
    means = None
    if args.action == "mean":
        means = mean_activations(model, saes, corpus_tokens(model.tokenizer, "edit-means", 256, 64), list(saes))
    target = make_task(task_name, model.tokenizer, n=64, seed=0)
    others = {t: make_task(t, model.tokenizer, n=64, seed=0) for t in BUILTIN_TASKS if t != task_name}
    objective = Objective(model, saes, target, others, n_docs=8, seq_len=24)
    start = time.perf_counter()
    scored = []
    for fe in latent_edits(graph, args.action, means):
        s = objective.score(Edit([fe]), [])
        scored.append((s.target_change + objective.weight * s.unintended + objective.text_weight * s.kl, fe))
    scored.sort(key=lambda x: x[0])  # most of the target removed per unit of collateral first
    seconds = time.perf_counter() - start
    rows, results = [], []
    for k in args.k:
        edit = Edit([fe for _, fe in scored[:k]], f"top {k} latents by specificity")
        report = edit_report(model, saes, edit, task_name, n=256, seed=1, n_completions=0, with_random=False)
        moved = {name: r.relative_change for name, r in report.tasks.items()}
        text = report.collateral.text_of("all").kl
        results.append({"k": k, "moved": moved, "text_kl": text, "tpp": report.collateral.tpp})
        rows.append([k, *(f"{moved[n]:+.1%}" for n in moved), f"{report.collateral.tpp:+.3f}", f"{text:.4f}"])
    print(f"{len(scored)} latents scored alone in {seconds:.0f} s ({args.action}); held-out prompts (seed 1) and text:")
    print_table(["latents", *moved, "TPP", "text KL (nats/token)"], rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
