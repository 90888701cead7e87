"""Dictionaries chosen for circuits: a width x L0 x architecture sweep of SAE sets on the
embedded model, each measured for reconstruction, interpretability and circuit size.

Each point is the default recipe (``sae.train.default_config``) with the architecture, width
and k (active latents per token; for matryoshka, inner prefixes at width / 16 and width / 4)
swapped, trained on all 12 hooks. Per set:

* reconstruction (``sae/evaluate.py``, 512 held-out sequences): the worst hook's FVU, CE loss
  recovered and dead fraction, and CE recovered with every SAE spliced at once;
* interpretability (``sae/interpret.py``): the share of alive latents whose best concept
  of the toy language's ground truth has F1 >= 0.8, on 256 held-out sequences;
* for IOI, SVA and greater-than, the hierarchical circuit of
  ``circuits discover --task T --target-faithfulness 0.9`` (IG, mean ablation, 512 discovery
  pairs, validated on the next seed's 128): sites, the feature level's latents + error
  terms and F, the random same-size F, and the share of the feature level's |effect| in
  error terms and in matched latents.

One markdown table, a Pareto plot (IOI feature-level latents against the worst hook's CE
recovered) and one JSON per point in ``--work`` (default ``outputs/dictionaries``), so a
sweep that stops resumes where it stopped (trained sets are kept there too).

``:x2`` after a point trains it on twice the default's tokens. A matryoshka point may name one
of its inner prefixes, ``matryoshka:1024:16@256``: the set's
first 256 latents per hook, spliced with their own (larger) error terms — the coarse circuit
to set beside a flat set of that width.

Run: ``.venv/bin/python benchmarks/dictionaries.py [--points ARCH:WIDTH:K[@PREFIX],...] [--grid]
[--tasks ioi,sva,greater_than] [--seed S]``. ``--grid`` is the whole grid (width 256, 512,
1,024, 4,096 x k 4, 8, 16, 32 x topk, batchtopk, matryoshka: 48 sets; jumprelu's L0 is set by
a coefficient, not k, so it is swept by ``--points jumprelu:WIDTH:COEFF``). Cost on 2 CPU
cores: ~3 min to train a set of width <= 1,024 (more at 4,096), ~4 min per task's circuit,
so ~15 min per point and ~12 h for the grid; the default points are the part that fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from circuits.circuit.config import HELD_OUT_PAIRS, HIERARCHY_PAIRS  # noqa: E402

DEFAULT_POINTS = "topk:1024:32,topk:256:16,topk:256:8,topk:512:8,batchtopk:256:8,matryoshka:1024:8"
GRID = [
    f"{arch}:{width}:{k}"
    for arch in ("topk", "batchtopk", "matryoshka")
    for width in (256, 512, 1024, 4096)
    for k in (4, 8, 16, 32)
]
TASKS = ("ioi", "sva", "greater_than")


def point_config(point: str, seed: int):
    """The SAE training config of ``ARCH:WIDTH:K[:xT]`` (jumprelu: ``K`` is the L0
    coefficient; ``xT``: T times the default's training tokens; ``@PREFIX``, a matryoshka
    set's inner prefix, is trained as the whole set)."""
    from sae.train import default_config

    arch, width, k, *tokens = point.partition("@")[0].split(":")
    cfg = replace(default_config(), arch=arch, width=int(width), seed=seed)
    if tokens:
        cfg = replace(cfg, n_tokens=round(cfg.n_tokens * float(tokens[0].removeprefix("x"))))
    if arch == "jumprelu":
        return replace(cfg, l0_coefficient=float(k))
    return replace(cfg, k=int(k))


def circuit_numbers(model, saes, task_name: str, n: int, interp) -> dict:
    """The hierarchical circuit of one task at target 0.9 and what its feature level holds."""
    from circuits.circuit.config import DiscoverConfig
    from circuits.circuit.discover import discover
    from circuits.circuit.graph import node_effects
    from circuits.circuit.record import record_of
    from sae.interpret import matched_share
    from tasks.builtin import make_task

    task = make_task(task_name, model.tokenizer, n=n, seed=0)
    held_out = make_task(task_name, model.tokenizer, n=HELD_OUT_PAIRS, seed=1)
    start = time.perf_counter()
    graph = discover(model, saes, task, DiscoverConfig(target_faithfulness=0.9), progress=False, held_out=held_out)
    h = record_of(graph).hierarchy
    nodes = [n[1:] for n in node_effects(graph)]
    share = matched_share(nodes, interp)
    return {
        "nodes": [list(n) for n in nodes],
        "sites": h.site_level.n_nodes,
        "site_f": h.site_level.faithfulness,
        "latents": h.feature_level.n_nodes,
        "errors": h.feature_level.n_error_nodes,
        "f": h.feature_level.faithfulness,
        "random_f": h.feature_level.random_faithfulness,
        "reached": h.site_level.reached_target and h.feature_level.reached_target,
        "error_share": share["error"],
        "matched_share": share["matched"],
        "seconds": time.perf_counter() - start,
    }


def run_point(model, point: str, work: Path, tasks: list[str], n: int, seed: int) -> dict:
    """Train (or reuse) one point's set and measure it; the result is saved beside it."""
    from circuits.core.files import write_atomic
    from sae.evaluate import evaluate_saes
    from sae.interpret import interpretability, matched_share
    from sae.saeset import MANIFEST
    from sae.train import default_config, train_sae_set

    name = point.replace(":", "-").replace("@", "-at") + f"-s{seed}"
    out = work / f"{name}.json"
    result = json.loads(out.read_text()) if out.is_file() else {"point": point, "seed": seed}
    folder = set_folder(point, work, seed)
    if point_config(point, seed) != default_config() and not (folder / MANIFEST).is_file():
        start = time.perf_counter()
        train_sae_set(model, point_config(point, seed), folder, progress=False)
        result["train_seconds"] = time.perf_counter() - start
    saes = load_point(model, point, work, seed)
    if "fvu" not in result:
        ev = evaluate_saes(model, saes, progress=False)
        scores = ev.saes.values()
        result |= {
            "fvu": max(s.fvu for s in scores),
            "ce_recovered": min(s.ce_recovered for s in scores),
            "all_spliced": ev.all_spliced_ce_recovered,
            "dead": max(s.dead_frac for s in scores),
            "l0": max(s.l0 for s in scores),
        }
    interp = interpretability(model, saes, progress=False)
    result |= {"matched": interp.matched_fraction(), "interpret_seconds": interp.seconds}
    write_atomic(out, json.dumps(result, indent=2))
    for task in tasks:
        if "nodes" not in result.get("circuits", {}).get(task, {}):
            result.setdefault("circuits", {})[task] = circuit_numbers(model, saes, task, n, interp)
            write_atomic(out, json.dumps(result, indent=2))
    for c in result.get("circuits", {}).values():  # with this run's concepts
        if "nodes" in c:
            share = matched_share([tuple(x) for x in c["nodes"]], interp)
            c["error_share"], c["matched_share"] = share["error"], share["matched"]
    write_atomic(out, json.dumps(result, indent=2))
    return result


def load_point(model, point: str, work: Path, seed: int):
    """A point's SAE set, trained by an earlier sweep run into ``work`` (``@PREFIX``: its prefix)."""
    from circuits.loaders import load_saes
    from sae.saeset import SAESet
    from sae.train import default_config

    prefix = point.partition("@")[2]
    if point_config(point, seed) == default_config():  # the cached default set
        saes = load_saes("toy", model, progress=False)
    else:
        saes = SAESet.load(set_folder(point, work, seed), model)
    return saes.prefix(int(prefix)) if prefix else saes


def set_folder(point: str, work: Path, seed: int) -> Path:
    """Where a point's trained set lives in ``work`` (a prefix point: its whole set's)."""
    return work / (point.partition("@")[0].replace(":", "-") + f"-s{seed}")


def split_report(model, points: list[str], work: Path, n: int, seed: int) -> Path:
    """The IOI circuit on the first (narrowest) point's set, its strongest latent's split tree
    across every point's set, and both in a report: ``work/split-tree/report.html``."""
    from circuits.circuit.config import DiscoverConfig
    from circuits.circuit.discover import discover
    from circuits.circuit.graph import node_effects
    from circuits.export.report import write_report
    from sae.interpret import interpretability, readability
    from sae.splitting import circuit_split_tree
    from tasks.builtin import make_task

    sets = [load_point(model, p, work, seed) for p in points]
    task = make_task("ioi", model.tokenizer, n=n, seed=0)
    held_out = make_task("ioi", model.tokenizer, n=HELD_OUT_PAIRS, seed=1)
    graph = discover(model, sets[0], task, DiscoverConfig(target_faithfulness=0.9), progress=False, held_out=held_out)
    nodes = node_effects(graph)
    split = circuit_split_tree(model, sets, [n[1:] for n in nodes])
    readable = readability(nodes, interpretability(model, sets[0], progress=False))
    out = work / "split-tree" / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_report(out, graph, readability=readable, split=split)


def row(r: dict, tasks: list[str]) -> list[str]:
    cells = [
        r["point"],
        f"{r['l0']:.1f}",
        f"{r['fvu']:.3f}",
        f"{r['ce_recovered']:.3f}",
        f"{r['all_spliced']:.3f}",
        f"{r['dead']:.3f}",
        f"{r['matched']:.2f}",
    ]
    for t in tasks:
        c = r.get("circuits", {}).get(t)
        cells.append(
            "—"
            if c is None
            else f"{c['sites']} / {c['latents']}+{c['errors']} (F {c['f']:.2f}, rand {c['random_f']:.2f}; "
            f"err {c['error_share']:.0%}, matched {c['matched_share']:.0%})"
        )
    return cells


RULE = (
    "the smallest IOI feature level (reaching F 0.9) among sets with CE recovered >= 0.95 at every hook, "
    ">= 0.90 all spliced, and dead <= 5 %"
)


def pick_default(results: list[dict]) -> dict | None:
    """The set ``RULE`` picks (None: no set qualifies)."""
    ok = [
        r
        for r in results
        if r["ce_recovered"] >= 0.95
        and r["all_spliced"] >= 0.90
        and r["dead"] <= 0.05
        and r.get("circuits", {}).get("ioi", {}).get("reached")
    ]
    return min(ok, key=lambda r: r["circuits"]["ioi"]["latents"] + r["circuits"]["ioi"]["errors"], default=None)


def pareto_plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        c = r.get("circuits", {}).get("ioi")
        if c is None:
            continue
        ax.scatter(r["ce_recovered"], c["latents"], color="C0" if c["reached"] else "C3")
        ax.annotate(r["point"], (r["ce_recovered"], c["latents"]), fontsize=7)
    ax.set_xlabel("worst hook's CE loss recovered")
    ax.set_ylabel("IOI feature-level latents (target F 0.9)")
    ax.set_yscale("log")
    ax.set_title("Dictionaries: reconstruction vs circuit size (red: target missed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=DEFAULT_POINTS, help=f"ARCH:WIDTH:K, comma-separated ({DEFAULT_POINTS})")
    parser.add_argument("--grid", action="store_true", help="the whole grid (48 sets, ~12 h on 2 cores)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks whose circuits are found")
    parser.add_argument(
        "--n", type=int, default=HIERARCHY_PAIRS, help=f"discovery pairs ({HELD_OUT_PAIRS} held out, the next seed's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="SAE training seed")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "dictionaries"), help="sets and results")
    parser.add_argument(
        "--split-tree",
        metavar="POINTS",
        help="instead of the sweep: the IOI circuit on the first of these trained points (narrowest first, "
        "e.g. topk:256:16,topk:1024:16 or matryoshka:1024:16@64,matryoshka:1024:16@256,matryoshka:1024:16) "
        "and its strongest latent's split tree across them, in WORK/split-tree/report.html",
    )
    args = parser.parse_args()

    from circuits.core.tables import markdown_table
    from circuits.loaders import load_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t]
    points = GRID if args.grid else args.points.split(",")
    model = load_model("toy", progress=False)
    if args.split_tree:
        print(split_report(model, args.split_tree.split(","), work, args.n, args.seed))
        return
    results = []
    for point in points:
        print(f"{point} ...", file=sys.stderr, flush=True)
        results.append(run_point(model, point, work, tasks, args.n, args.seed))
    header = ["set", "L0", "worst FVU", "worst CE rec", "all spliced", "worst dead", "matched"]
    header += [f"{t}: sites / latents+errors" for t in tasks]
    print(markdown_table(header, [row(r, tasks) for r in results]))
    pareto_plot(results, work / "pareto.png")
    print(f"\nplot: {work / 'pareto.png'}")
    pick = pick_default(results)
    print(f"rule: {RULE}\npicked: {pick['point'] if pick else 'none qualifies'}")


if __name__ == "__main__":
    main()
