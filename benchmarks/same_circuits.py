"""Check that a code change finds the same circuits: discover IOI and SVA (IG and AtP, 128
pairs, seed 0) and one hierarchical IOI circuit (IG, target faithfulness 0.9, mean ablation,
validated on the 128 pairs of seed 1) on the embedded model and either save node effects,
edge weights and the hierarchy's numbers (level sizes, faithfulness, curves)
(``--save DIR``) or compare them with a saved reference (``--reference DIR``): the same
nodes and edges, effects and weights within ``--atol`` (default 1e-5). Prints a table.

Run: `.venv/bin/python benchmarks/same_circuits.py --reference DIR` (save DIR from the old
code first, e.g. from a git worktree of it: `cd OLD && python NEW/benchmarks/same_circuits.py --save DIR`).
`--time K` times warm IG discovery instead, to compare two commits in one sitting.
`--one-batch-float32` computes the ablation's reference means and metric means as the code
before the streamed validation engine did (one forward pass over every prompt, float32
means), to check that rounding is the only difference where a circuit differs: the mask
optimiser's ranking amplifies differences of ~1e-7 in those means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the checkout the command runs in

try:  # either side of the moves, so the old code can save a reference
    from circuits.circuit.discover import DiscoverConfig, discover
except ImportError:
    from circuits.discover import DiscoverConfig, discover
try:
    from circuits.loaders import load_model, load_saes
except ImportError:
    try:
        from circuits.toy.model import load_model
    except ImportError:
        from circuits.model import load_model
    from sae.train import load_saes
from tasks.builtin import make_task  # noqa: E402

CASES = [(task, method) for task in ("ioi", "sva") for method in ("ig", "atp")] + [("ioi", "hierarchy")]


def circuit(model, saes, task_name: str, method: str, n: int) -> dict:
    task = make_task(task_name, model.tokenizer, n=n, seed=0)
    held_out, cfg = None, DiscoverConfig(method="ig", target_faithfulness=0.9)
    if method == "hierarchy":
        held_out = make_task(task_name, model.tokenizer, n=n, seed=1)
    else:
        cfg = DiscoverConfig(method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = discover(model, saes, task, cfg, progress=False, held_out=held_out)
    return {
        "nodes": {v: a["effect"] for v, a in graph.nodes(data=True)},
        "edges": {f"{u} -> {v}": w for u, v, w in graph.edges(data="weight")},
        "levels": numbers(hierarchy_of(graph)),
    }


def hierarchy_of(graph) -> dict:
    """The hierarchical circuit as a plain dict, from a record or from the old metadata key."""
    if "hierarchy" in graph.graph:
        return graph.graph["hierarchy"]
    record = graph.graph.get("record")
    hierarchy = getattr(record, "hierarchy", None)
    return hierarchy.to_dict() if hierarchy is not None else {}


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict or list, keyed by its path; timings left out."""
    if isinstance(tree, dict):
        items = [(k, v) for k, v in tree.items() if k not in ("times", "seconds")]
    elif isinstance(tree, list):
        items = list(enumerate(tree))
    else:
        return {prefix: tree} if isinstance(tree, int | float) and not isinstance(tree, bool) else {}
    return {k: v for key, sub in items for k, v in numbers(sub, f"{prefix}.{key}" if prefix else str(key)).items()}


def use_one_batch_float32() -> None:
    """Replace the streamed float64 sums of the ablation's reference means and metrics by
    the old one-pass float32 means (mean ablation only)."""
    import torch

    import circuits.circuit.ablation as ablation
    from circuits.attribution.splice import spliced

    @torch.no_grad()
    def reference_values(model, saes, task, spec=None, rows=None, hooks=None, batch_size=None):
        assert spec is None or spec.kind == "mean", "one-batch float32 references: mean ablation only"
        with spliced(model, saes) as nodes:
            model(task.clean)
        return {h: nodes[h].map(lambda t: t.detach().mean(0)) for h in saes}

    @torch.no_grad()
    def metric_removing(self, masks):
        masks = {h: m for h, m in masks.items() if self.ablatable(h) and (m.latents.any() or m.error.any())}
        with ablation.ablated(self.model, self.saes, masks, self.values or {}, self.acts):
            return self.task.metric_per_example(self.model(self.task.clean)).mean().item()

    ablation.reference_values = reference_values
    ablation.Ablator.metric_removing = metric_removing


RENAMED: dict[str, str] = {}  # a hierarchy number's new path -> its path in the reference


def compare(old: dict, new: dict, atol: float) -> tuple[str, bool]:
    """Table cells and whether the circuits are the same: the same nodes and edges, values
    within ``atol``; a hierarchy's numbers are compared where both files have them (the record
    renamed some: `RENAMED`), and relative to their size (F and metrics are O(1), sizes O(1000))."""
    cells, same = [], True
    for part in ("nodes", "edges", "levels"):
        a, b = old[part], {RENAMED.get(k, k): v for k, v in new[part].items()} if part == "levels" else new[part]
        common = set(a) & set(b)
        worst = max((abs(a[k] - b[k]) / max(1.0, abs(a[k])) for k in common), default=0.0)
        ok = (set(a) == set(b) if part != "levels" else bool(common) or not a) and worst <= atol
        same &= ok
        cells += [f"{len(a)} / {len(b)}", str(len(set(a) ^ set(b))), f"{worst:.1e}"]
    return " | ".join(cells), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write this code's circuits to DIR")
    group.add_argument("--reference", help="compare with circuits saved in DIR")
    group.add_argument(
        "--time", type=int, metavar="K", help="time warm IG discovery of IOI K times (after one untimed run)"
    )
    parser.add_argument("--n", type=int, default=128, help="prompt pairs (default 128)")
    parser.add_argument(
        "--one-batch-float32", action="store_true", help="reference and metric means as the old code computed them"
    )
    parser.add_argument("--only", help="run only these cases, comma-separated (e.g. ioi-hierarchy)")
    parser.add_argument("--atol", type=float, default=1e-5, help="largest allowed difference (default 1e-5)")
    args = parser.parse_args()
    if args.one_batch_float32:
        use_one_batch_float32()
    cases = [c for c in CASES if args.only is None or "-".join(c) in args.only.split(",")]
    model = load_model("toy", progress=False)
    saes = load_saes("toy", model, progress=False)
    if args.time:
        task = make_task("ioi", model.tokenizer, n=args.n, seed=0)
        discover(model, saes, task, DiscoverConfig(method="ig"), progress=False)  # warm
        for _ in range(args.time):
            start = time.perf_counter()
            discover(model, saes, task, DiscoverConfig(method="ig"), progress=False)
            print(f"warm IG discovery, IOI, {args.n} pairs: {time.perf_counter() - start:.2f} s")
        return
    if args.save:
        folder = Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        for task, method in cases:
            (folder / f"{task}-{method}.json").write_text(json.dumps(circuit(model, saes, task, method, args.n)))
        print(f"saved {len(cases)} circuits to {folder}")
        return
    print(
        "| circuit | nodes ref / now | nodes differing | max |effect diff| | edges ref / now | "
        "edges differing | max |weight diff| | level numbers ref / now | differing | max diff | same |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    all_same = True
    for task, method in cases:
        old = json.loads((Path(args.reference) / f"{task}-{method}.json").read_text())
        row, same = compare(old, circuit(model, saes, task, method, args.n), args.atol)
        all_same &= same
        print(f"| {task} {method} | {row} | {'yes' if same else 'NO'} |")
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
