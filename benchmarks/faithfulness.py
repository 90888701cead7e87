"""How small can a faithful circuit be? Per built-in task and ablation convention, on the
embedded model and its default SAE set: node effects by IG on the discovery prompts (seed
0), every faithfulness figure on held-out prompts (seed 1), target F >= 0.9.

Columns: sites needed (the site skeleton, ``circuits.circuit.hierarchy``) with its F, completeness
and random same-size baseline; latent + error nodes needed with the attribution prefix over
the whole model (every node ranked by |AtP effect|, and by |IG effect|), the IG attribution
prefix inside the skeleton, and the mask optimiser's ranking inside the skeleton; F of the top 100 / 300 /
1,000 nodes of the whole-model attribution ranking and of the optimised ranking; the nodes
the optimised ranking needs for F >= 0.9 on the discovery prompts themselves (the gap to the
held-out cut is generalisation); MIB's CPR
(area under F, nodes ranked by signed effect, most negative first: the nodes the behaviour
relies on) and CMD (area under |1 - F|, ranked by |effect|) over the whole-model ranking,
circuit size as a fraction of the ranked nodes; and the seconds of each step.

Run: `.venv/bin/python benchmarks/faithfulness.py [--tasks ioi sva] [--ablations mean]`
(about 3 minutes per task and convention on 2 cores).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from circuits.attribution.nodes import first_pass
from circuits.circuit.ablation import Ablator
from circuits.circuit.config import ABLATIONS, AblationSpec, HierarchyConfig, MaskConfig
from circuits.circuit.faithfulness import areas, log_sizes, smallest_prefix
from circuits.circuit.hierarchy import find_hierarchy
from circuits.core.tables import print_table
from circuits.core.vocab import Node
from circuits.loaders import load_model, load_saes
from tasks.builtin import BUILTIN_TASKS, make_task

TARGET = 0.9
AT = (100, 300, 1000)


def ranked_all(effects, saes, n_pos: int, signed: bool = False) -> list[Node]:
    """Every SAE node with a non-zero effect and every error node: largest |effect| first,
    or (``signed``) most negative effect first."""
    nodes = []
    for h in saes:
        v = effects.values[h]
        nodes += [(Node.at(h, p), v.error[p].item()) for p in range(n_pos)]
        nodes += [(Node.at(h, p, i), v.latents[p, i].item()) for p, i in v.latents.nonzero().tolist()]
    nodes.sort(key=(lambda x: x[1]) if signed else (lambda x: -abs(x[1])))
    return [n for n, _ in nodes]


def counts(nodes: list[Node]) -> str:
    n_err = sum(1 for n in nodes if n.latent is None)
    return f"{len(nodes) - n_err} + {n_err}"


def row(model, saes, task_name: str, how: str, n: int, n_discovery: int, mask: MaskConfig) -> list[str]:
    times: dict[str, float] = {}
    task = make_task(task_name, model.tokenizer, n=n_discovery, seed=0)
    held = make_task(task_name, model.tokenizer, n=n, seed=1)
    t = time.perf_counter()
    effects = first_pass(model, saes, task, "ig", 10, 32, progress=False).effects
    times["IG"] = time.perf_counter() - t
    t = time.perf_counter()
    test = Ablator(model, saes, held, AblationSpec(how))
    ranked = ranked_all(effects, saes, task.n_pos)
    k_all, f_all = smallest_prefix(len(ranked), lambda k: test.faithfulness(ranked[:k]), TARGET)
    atp = ranked_all(first_pass(model, saes, task, "atp", batch_size=32, progress=False).effects, saes, task.n_pos)
    k_atp, f_atp = smallest_prefix(len(atp), lambda k: test.faithfulness(atp[:k]), TARGET)
    at_all = [test.faithfulness(ranked[:k]) for k in AT]
    signed = ranked_all(effects, saes, task.n_pos, signed=True)
    sizes = log_sizes(len(ranked), per_decade=4)
    cpr, _ = areas(sizes, [test.faithfulness(signed[:k]) for k in sizes], len(signed))
    _, cmd = areas(sizes, [test.faithfulness(ranked[:k]) for k in sizes], len(ranked))
    times["whole-model prefix, CPR, CMD"] = time.perf_counter() - t
    h = find_hierarchy(
        model, saes, task, held, effects, HierarchyConfig(TARGET, AblationSpec(how)), mask, progress=False
    )
    times.update(h.times)
    opt = h.ranking("optimised")
    at_opt = [test.faithfulness(opt[:k]) if len(opt) >= k else float("nan") for k in AT]
    train = Ablator(model, saes, task, AblationSpec(how))  # the gap between these prompts and held-out ones
    k_train, _ = smallest_prefix(len(opt), lambda k: train.faithfulness(opt[:k]), TARGET) if opt else (0, 0.0)
    sl, al, ol = h.site_level, h.attribution, h.optimised

    def level(lv) -> str:
        mark = "" if lv.reached_target else " (missed)"
        return f"{lv.cut.n_latents} + {lv.cut.n_errors}, F {lv.cut.faithfulness:.2f}{mark}"

    return [
        task_name,
        how,
        f"{sl.size}, F {sl.cut.faithfulness:.2f}, C {sl.cut.completeness:.2f}, R {sl.cut.random_faithfulness:.2f}",
        f"{counts(atp[:k_atp])}, F {f_atp:.2f}",
        f"{counts(ranked[:k_all])}, F {f_all:.2f}",
        level(al),
        level(ol) + f", R {ol.cut.random_faithfulness:.2f}" if ol else "-",
        str(k_train),
        " / ".join(f"{f:.2f}" for f in at_all),
        " / ".join(f"{f:.2f}" for f in at_opt),
        f"{cpr:.3f}",
        f"{cmd:.3f}",
        ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(BUILTIN_TASKS))
    p.add_argument("--ablations", nargs="+", default=["mean", "mean_corrupt", "counterfactual"], choices=ABLATIONS)
    p.add_argument("--n", type=int, default=128, help="held-out prompt pairs")
    p.add_argument("--n-discovery", type=int, default=128, help="discovery prompt pairs (attribution, the mask)")
    p.add_argument("--mask-steps", type=int, default=MaskConfig().steps)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model("toy", progress=False)
    saes = load_saes("toy", model, progress=False)
    rows = []
    for name in args.tasks:
        for how in args.ablations:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                rows.append(row(model, saes, name, how, args.n, args.n_discovery, MaskConfig(steps=args.mask_steps)))
            print(" | ".join(rows[-1]), flush=True)
    print()
    print_table(
        [
            "task",
            "ablation",
            "sites for F>=0.9 (F, completeness, random)",
            "nodes: whole-model AtP prefix",
            "nodes: whole-model IG prefix",
            "nodes: skeleton attribution prefix",
            "nodes: skeleton optimised",
            "optimised: nodes for F>=0.9 on the discovery prompts",
            "F top 100/300/1000, attribution",
            "F top 100/300/1000, optimised",
            "CPR (signed)",
            "CMD (abs)",
            "seconds",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
