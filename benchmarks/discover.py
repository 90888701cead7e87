"""Time circuit discovery on the embedded model (IOI, all 12 SAEs, 128 prompt pairs by
default) and compare, on the same graph: batched edges vs one backward pass per downstream
node, and exact patching vs attribution. Prints markdown tables; `--json PATH` also writes JSON.

Run: `make benchmark` or `.venv/bin/python benchmarks/discover.py [--n 128]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuits.attribution.edges import edges_into, source_masks, upstream_hooks
from circuits.attribution.nodes import exact_effects, node_effects
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover
from circuits.circuit.graph import nodes_of
from circuits.core.vocab import Node
from circuits.loaders import load_model, load_saes
from tasks.builtin import make_task


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def graph_targets(graph) -> dict[str, list[Node]]:
    """The graph's SAE nodes by hook, as edge targets."""
    out: dict[str, list[Node]] = {}
    for node in nodes_of(graph).values():
        if not node.is_embed:
            out.setdefault(node.hook, []).append(node)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="IOI prompt pairs (default 128)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    model = load_model("toy")
    saes = load_saes("toy", model)
    task = make_task("ioi", model.tokenizer, n=args.n)
    discover(model, saes, task.subset(slice(0, 8)), DiscoverConfig(method="atp"), progress=False)  # warm-up

    rows, result = [], {"n_pairs": args.n, "threads": torch.get_num_threads()}
    for method in ("atp", "ig"):
        _, t_nodes = timed(node_effects, model, saes, task, method, progress=False)
        graph, t_total = timed(discover, model, saes, task, DiscoverConfig(method=method), progress=False)
        result[method] = {
            "nodes_s": t_nodes,
            "discover_s": t_total,
            "graph_nodes": graph.number_of_nodes(),
            "graph_edges": graph.number_of_edges(),
        }
        rows.append(
            f"| {method} | {args.n} | {t_nodes:.2f} | {t_total:.2f} | {graph.number_of_nodes()} | "
            f"{graph.number_of_edges()} |"
        )
    print(f"Discovery on the embedded model, IOI, {len(saes)} SAEs, {torch.get_num_threads()} threads\n")
    print("| method | pairs | node attribution (s) | discovery: nodes + edges (s) | nodes | edges |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))

    # Edges into the IG graph's nodes, from its nodes: three ways, same numbers.
    targets = graph_targets(graph)
    n_targets = sum(len(t) for t in targets.values())
    times = {"batched": 0.0, "loop": 0.0, "per_node": 0.0}
    for hook, tg in targets.items():
        sources = source_masks(list(nodes_of(graph).values()), saes, task.n_pos, upstream_hooks(hook, saes, model))
        a, dt = timed(edges_into, model, saes, task, hook, tg, sources, batched=True)
        times["batched"] += dt
        b, dt = timed(edges_into, model, saes, task, hook, tg, sources, batched=False)
        times["loop"] += dt
        for i, t in enumerate(tg):  # one forward and one backward pass per downstream node
            c, dt = timed(edges_into, model, saes, task, hook, [t], sources, batched=False)
            times["per_node"] += dt
            for u in c.weights:
                assert torch.allclose(c.weights[u].error[0], a.weights[u].error[i], atol=1e-5)
        for u in a.weights:
            assert torch.allclose(a.weights[u].latents, b.weights[u].latents, atol=1e-5)
    result["edges"] = {"targets": n_targets, **{f"{k}_s": v for k, v in times.items()}}
    print(f"\nEdges into the {n_targets} SAE nodes of the IG graph, from its nodes ({args.n} pairs)\n")
    print("| edge computation | time (s) | per-node / this |")
    print("|---|---|---|")
    for name, label in (
        ("per_node", "one forward + one backward per downstream node"),
        ("loop", "shared forward, one backward per downstream node"),
        ("batched", "shared forward, vmapped backward (default)"),
    ):
        print(f"| {label} | {times[name]:.2f} | {times['per_node'] / times[name]:.1f}x |")

    # Exact patching of the graph's nodes vs the attribution that scored every node.
    nodes = list(nodes_of(graph).values())
    _, t_exact = timed(exact_effects, model, saes, task, nodes)
    n_all = sum(saes[h].cfg.d_sae for h in saes) * task.n_pos
    result["exact"] = {"nodes": len(nodes), "exact_s": t_exact, "all_latent_nodes": n_all}
    print(
        f"\nExact patching of the IG graph's {len(nodes)} nodes vs attribution of all {n_all} latent "
        f"nodes (+ errors) ({args.n} pairs)\n"
    )
    print("| method | time (s) | exact / this, same node set |")
    print("|---|---|---|")
    print(f"| exact, one forward pass per node | {t_exact:.2f} | 1.0x |")
    for method in ("atp", "ig"):
        t = result[method]["nodes_s"]
        print(f"| {method}, every node at once | {t:.2f} | {t_exact / t:.1f}x |")
    print(f"\nexact patching of all {n_all} latent nodes at this rate: {t_exact / len(nodes) * n_all / 60:.0f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
