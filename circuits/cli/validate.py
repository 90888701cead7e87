"""``validate``: a circuit's faithfulness and completeness by ablation on held-out prompts, its
curve over sizes against random circuits, and (``--prune``) its smallest faithful prefix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circuits.circuit.config import ABLATIONS, HierarchyConfig
from circuits.cli.args import add_circuit_args, open_circuit, writable
from circuits.core.config import add_flag
from circuits.core.tables import markdown_table, print_table


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="faithfulness and completeness of a circuit by ablation",
        description="Ablate everything outside the circuit (and, for completeness, "
        "the circuit itself) on held-out prompts; print faithfulness, "
        "completeness, the curve over circuit sizes with a random "
        "baseline, CPR and CMD; write faithfulness.png beside the circuit.",
    )
    add_circuit_args(p)
    p.add_argument("--ablation", help=f"one of {', '.join(ABLATIONS)} (default: the circuit's, else mean)")
    p.add_argument(
        "--start-layer", type=int, help="layers below this are never ablated (default: the circuit's, else 0)"
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="also write circuit.pruned.json: the smallest top-|effect| prefix reaching --target",
    )
    add_flag(p, "--target", HierarchyConfig, "faithfulness target for --prune")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from circuits.circuit.config import AblationSpec
    from circuits.circuit.faithfulness import faithfulness_curve, prune_by_ablation, ranked_nodes
    from circuits.circuit.graph import save_graph
    from circuits.circuit.hierarchy import validate_recorded
    from circuits.circuit.record import record_of
    from circuits.export.plots import plot_faithfulness

    graph, model, saes, task = open_circuit(args)
    folder = writable(Path(args.circuit).parent)
    record = record_of(graph).hierarchy  # the circuit's ablation convention, else mean
    how = args.ablation or (record.ablation if record else "mean")
    start_layer = args.start_layer if args.start_layer is not None else (record.start_layer if record else 0)
    spec = AblationSpec(how, start_layer, seed=args.seed or 0)
    levels = validate_recorded(graph, model, saes, task, HierarchyConfig(ablation=spec)) if record else None
    if record is None and not args.json:
        print(
            f"circuits: note: {args.circuit} has no site and feature levels (found without "
            "--target-faithfulness): validating its nodes only",
            file=sys.stderr,
        )
    result = faithfulness_curve(model, saes, task, ranked_nodes(graph), spec, progress=not args.quiet)
    title = f"{record_of(graph).task}: {result.ablation} ablation, {task.n_examples} held-out pairs"
    png = plot_faithfulness(result, folder / "faithfulness.png", title=title)
    if args.prune:
        small, result.pruned = prune_by_ablation(graph, model, saes, task, args.target, AblationSpec(how, start_layer))
        result.pruned_path = str(save_graph(small, folder / "circuit.pruned.json"))
    print_validation(result, levels, how, task.n_examples, args.target, png, args.json)


def print_validation(result, levels, how: str, n_pairs: int, target: float, png: Path, as_json: bool) -> None:
    """The curve (and the recorded levels, measured again) as tables, or as JSON."""
    import json

    if as_json:
        out = result.to_dict()
        if levels is not None:
            out["site_level"], out["feature_level"] = (level.to_dict() for level in levels)
        print(json.dumps(out, indent=2))
        return
    if levels is not None:
        rows = [
            [name, size, f"{lv.faithfulness:.3f}", f"{lv.completeness:.3f}", f"{lv.random_faithfulness:.3f}"]
            for name, size, lv in (
                ("sites", str(levels[0].n_latents), levels[0]),
                ("features", f"{levels[1].n_latents} + {levels[1].n_errors} err", levels[1]),
            )
        ]
        print(f"hierarchical circuit, {how} ablation, {n_pairs} pairs:")
        print_table(["level", "size", "faithfulness", "completeness", "random same size"], rows)
        print()
    print(
        f"{result.ablation} ablation, {n_pairs} pairs: faithfulness {result.faithfulness:.3f}, "
        f"completeness {result.completeness:.3f}, CPR {result.cpr:.3f}, CMD {result.cmd:.3f} "
        f"({result.whole.n_latents} feature nodes, {result.whole.n_errors} error nodes)"
    )
    headers = ["feature nodes", "error nodes", "faithfulness", "random circuit"]
    curve = [[c.n_latents, c.n_errors, f"{c.faithfulness:.3f}", f"{c.random_faithfulness:.3f}"] for c in result.curve]
    print("\n" + markdown_table(headers, curve))
    if result.pruned is not None:
        p = result.pruned
        print(
            f"\nsmallest prefix with faithfulness >= {target}: {p.n_latents} feature + {p.n_errors} "
            f"error nodes, F {p.faithfulness:.3f}"
            + ("" if p.reached_target else " (target not reached)")
            + f" -> {result.pruned_path}"
        )
    print(f"\n-> {png}")
