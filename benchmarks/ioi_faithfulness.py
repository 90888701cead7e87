"""How many SAE nodes does IOI need on the embedded model? Faithfulness (mean ablation,
held-out prompts) of the top-k nodes of the whole ranked list (AtP, all 12 SAEs), of the
same with every error node kept, and of a per-example oracle (each example keeps its own
top-k nodes). Prints a markdown table.

Run: `.venv/bin/python benchmarks/ioi_faithfulness.py [--n 128] [--saes DIR]` (20 s on 2 cores).
"""

from __future__ import annotations

import argparse

import torch

from circuits.ablation import Faithfulness, complement, empty_masks, metric_with, node_masks, reference_values
from circuits.attribution import clean_grads, node_effects, run_batch
from circuits.model import load_model
from circuits.splice import spliced
from circuits.values import NodeValues
from circuits.vocab import Node
from sae.train import load_saes
from tasks.builtin import make_task

SIZES = [25, 100, 300, 1000, 2000, 3000, 4000, 6000, 10000]


def few_names(tokenizer, n: int, n_names: int, seed: int):
    """IOI prompts whose IO and S both come from a fixed set of ``n_names`` names (drawn from
    a large sample of the usual eval prompts)."""
    big = make_task("ioi", tokenizer, n=max(20000, 400 * n * 80 // n_names**2), seed=seed)
    names = sorted(set(big.answer[:, 0].tolist()))[:n_names]
    keep = torch.isin(big.answer[:, 0], torch.tensor(names)) & torch.isin(big.wrong[:, 0], torch.tensor(names))
    index = keep.nonzero().flatten()[:n]
    if len(index) < n:
        raise SystemExit(f"only {len(index)} prompts with {n_names} names; lower --n")
    return big.subset(index)


def ranked_all(effects, saes, n_pos: int) -> list[Node]:
    """Every SAE node with a non-zero mean effect (and every error node), largest |effect| first."""
    nodes = []
    for h in saes:
        v = effects.values[h]
        nodes += [(Node.at(h, p), v.error[p].item()) for p in range(n_pos)]
        nodes += [(Node.at(h, p, i), v.latents[p, i].item()) for p, i in v.latents.nonzero().tolist()]
    nodes.sort(key=lambda x: -abs(x[1]))
    return [n for n, _ in nodes]


@torch.no_grad()
def oracle(model, saes, task, values, ref: Faithfulness, k: int) -> float:
    """F when each example keeps its own top-k nodes by its own AtP effect."""
    hooks = list(saes)
    run = run_batch(model, saes, task)
    with torch.enable_grad():
        grads = clean_grads(model, saes, run)
    eff = {h: run.delta(h) @ grads[h] for h in hooks}  # latents [b, pos, d_sae], error [b, pos]
    parts = [eff[h].latents.flatten(1) for h in hooks] + [eff[h].error for h in hooks]
    sizes = [p.shape[1] for p in parts]
    flat = torch.cat(parts, 1).abs()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.arange(flat.shape[0]).unsqueeze(1), flat.topk(k, dim=1).indices] = True
    kept = keep.split(sizes, 1)
    masks = {
        h: NodeValues(kept[i].reshape(eff[h].latents.shape), kept[len(hooks) + i]) for i, h in enumerate(hooks)
    }  # per example: the nodes it keeps
    return ref.of(metric_with(model, saes, task, complement(masks), values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="IOI prompt pairs (default 128)")
    parser.add_argument("--saes", default="toy", help="SAE set: 'toy' (default) or a folder")
    parser.add_argument("--names", type=int, help="only prompts whose IO and S are among this many names")
    args = parser.parse_args()
    model = load_model("toy")
    saes = load_saes(args.saes, model)
    found, held_out = (make_task("ioi", model.tokenizer, n=args.n, seed=s) for s in (0, 1))
    if args.names:
        found, held_out = (few_names(model.tokenizer, args.n, args.names, seed=s) for s in (0, 1))
    ranked = ranked_all(node_effects(model, saes, found, "atp", progress=False), saes, found.n_pos)
    values = reference_values(model, saes, held_out, "mean")
    everything = complement(empty_masks(saes, held_out.n_pos))
    ref = Faithfulness(
        metric_with(model, saes, held_out, None, values), metric_with(model, saes, held_out, everything, values)
    )
    errors = [Node.at(h, p) for h in saes for p in range(held_out.n_pos)]
    features = [n for n in ranked if n.latent is not None]

    def f_of(nodes: list[Node]) -> float:
        masks = node_masks(nodes, saes, held_out.n_pos)
        return ref.of(metric_with(model, saes, held_out, complement(masks), values))

    with spliced(model, saes) as nodes:
        model(held_out.clean)
    active = sum(int((nodes[h].latents != 0).sum()) for h in saes) / held_out.n_examples
    print(
        f"IOI, {args.n} pairs found / {args.n} held out; {len(ranked)} nodes with non-zero effect; "
        f"{active:.0f} latent nodes active per example; m(M) {ref.m_model:.3f}, m(empty) {ref.m_empty:.3f}\n"
    )
    print(
        f"| k | F: top-k nodes (features + errors) | F: top-k features + all {len(errors)} error nodes | "
        "F: each example's own top-k |"
    )
    print("|---|---|---|---|")
    for k in SIZES:
        top = ranked[:k]
        n_err = sum(1 for n in top if n.latent is None)
        own = f"{oracle(model, saes, held_out, values, ref, k):.3f}" if k <= 1000 else "-"
        print(f"| {k} ({k - n_err} + {n_err}) | {f_of(top):.3f} | {f_of(features[:k] + errors):.3f} | {own} |")


if __name__ == "__main__":
    main()
