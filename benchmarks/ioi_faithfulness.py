"""How many SAE nodes does IOI need on the embedded model? Faithfulness (mean ablation,
held-out prompts) of the top-k nodes of the whole ranked list (AtP, all 12 SAEs), of the
same with every error node kept, and of a per-example oracle (each example keeps its own
top-k nodes). Prints a markdown table.

Run: `.venv/bin/python benchmarks/ioi_faithfulness.py [--n 128] [--saes DIR]` (20 s on 2 cores).
"""

from __future__ import annotations

import argparse

import torch

from circuits.ablation import Faithfulness, NodeMasks, _ratio, metric_with, reference_values
from circuits.attribution import _nodes, metric_grads, node_effects
from circuits.model import load_model
from circuits.splice import spliced
from sae.train import load_saes
from tasks.builtin import make_task

SIZES = [25, 100, 300, 1000, 2000, 3000, 4000, 6000, 10000]


def few_names(tokenizer, n: int, n_names: int, seed: int):
    """IOI prompts whose IO and S both come from a fixed set of ``n_names`` names (drawn from
    a large sample of the usual eval prompts)."""
    big = make_task("ioi", tokenizer, n=max(20000, 400 * n * 80 // n_names ** 2), seed=seed)
    names = sorted(set(big.answer[:, 0].tolist()))[:n_names]
    keep = torch.isin(big.answer[:, 0], torch.tensor(names)) & torch.isin(big.wrong[:, 0], torch.tensor(names))
    index = keep.nonzero().flatten()[:n]
    if len(index) < n:
        raise SystemExit(f"only {len(index)} prompts with {n_names} names; lower --n")
    return big.subset(index)


def ranked_all(effects, saes, n_pos: int) -> list:
    """Every node with a non-zero mean effect, largest |effect| first."""
    nodes = []
    for h in saes:
        nodes += [((h, p, None), effects.errors[h][p].item()) for p in range(n_pos)]
        lat = effects.latents[h]
        nodes += [((h, p, i), lat[p, i].item()) for p, i in lat.nonzero().tolist()]
    nodes.sort(key=lambda x: -abs(x[1]))
    return [n for n, _ in nodes]


@torch.no_grad()
def oracle(model, saes, task, values, ref, k: int) -> float:
    """F when each example keeps its own top-k nodes by its own AtP effect."""
    hooks = list(saes)
    with torch.enable_grad():
        gf, ge = metric_grads(model, saes, task, hooks)
    c, p = _nodes(model, saes, task.clean), _nodes(model, saes, task.corrupt)
    eff = [(gf[i] * (p.latents[h] - c.latents[h])).flatten(1) for i, h in enumerate(hooks)]
    eff += [(ge[i] * (p.errors[h] - c.errors[h])).sum(-1) for i, h in enumerate(hooks)]
    sizes = [e.shape[1] for e in eff]
    flat = torch.cat(eff, 1).abs()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.arange(flat.shape[0]).unsqueeze(1), flat.topk(k, dim=1).indices] = True
    parts = keep.split(sizes, 1)
    edits = {}
    for i, h in enumerate(hooks):
        kf = parts[i].reshape(c.latents[h].shape)
        ke = parts[len(hooks) + i].reshape(c.errors[h].shape[:2])
        fr, er = values[h]
        edits[h] = lambda f, e, kf=kf, ke=ke, fr=fr, er=er: (torch.where(kf, f, fr),
                                                            torch.where(ke.unsqueeze(-1), e, er))
    with spliced(model, saes, edits=edits):
        return _ratio(task.metric_per_example(model(task.clean)).mean().item(), ref)


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
    full = NodeMasks.empty(saes, held_out.n_pos).complement()
    ref = Faithfulness(metric_with(model, saes, held_out, None, values),
                       metric_with(model, saes, held_out, full, values), 0.0, 0.0)
    errors = [(h, p, None) for h in saes for p in range(held_out.n_pos)]
    features = [n for n in ranked if n[2] is not None]

    def f_of(nodes) -> float:
        masks = NodeMasks.from_nodes(nodes, saes, held_out.n_pos)
        return _ratio(metric_with(model, saes, held_out, masks.complement(), values), ref)

    with spliced(model, saes) as nodes:
        model(held_out.clean)
    active = sum(int((nodes.latents[h] != 0).sum()) for h in saes) / held_out.n_examples
    print(f"IOI, {args.n} pairs found / {args.n} held out; {len(ranked)} nodes with non-zero effect; "
          f"{active:.0f} latent nodes active per example; m(M) {ref.m_model:.3f}, m(empty) {ref.m_empty:.3f}\n")
    print("| k | F: top-k nodes (features + errors) | F: top-k features + all 180 error nodes | "
          "F: each example's own top-k |")
    print("|---|---|---|---|")
    for k in SIZES:
        top = ranked[:k]
        n_err = sum(1 for n in top if n[2] is None)
        own = f"{oracle(model, saes, held_out, values, ref, k):.3f}" if k <= 1000 else "-"
        print(f"| {k} ({k - n_err} + {n_err}) | {f_of(top):.3f} | {f_of(features[:k] + errors):.3f} | {own} |")


if __name__ == "__main__":
    main()
