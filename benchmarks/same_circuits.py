"""Check that a code change finds the same circuits: discover IOI and SVA (IG and AtP, 128
pairs, seed 0) on the embedded model and either save node effects and edge weights
(``--save DIR``) or compare them with a saved reference (``--reference DIR``): the same
nodes and edges, effects and weights within ``--atol`` (default 1e-5). Prints a table.

Run: `.venv/bin/python benchmarks/same_circuits.py --reference DIR` (save DIR from the old
code first, e.g. from a git worktree of it: `cd OLD && python NEW/benchmarks/same_circuits.py --save DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the checkout the command runs in

from circuits.circuit.discover import DiscoverConfig, discover  # noqa: E402
from circuits.toy.model import load_model  # noqa: E402
from sae.train import load_saes  # noqa: E402
from tasks.builtin import make_task  # noqa: E402

CASES = [(task, method) for task in ("ioi", "sva") for method in ("ig", "atp")]


def circuit(model, saes, task_name: str, method: str, n: int) -> dict:
    task = make_task(task_name, model.tokenizer, n=n, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = discover(model, saes, task, DiscoverConfig(method=method), progress=False)
    return {
        "nodes": {v: a["effect"] for v, a in graph.nodes(data=True)},
        "edges": {f"{u} -> {v}": w for u, v, w in graph.edges(data="weight")},
    }


def compare(old: dict, new: dict, atol: float) -> tuple[str, bool]:
    cells, same = [], True
    for part in ("nodes", "edges"):
        a, b = old[part], new[part]
        common = set(a) & set(b)
        worst = max((abs(a[k] - b[k]) for k in common), default=0.0)
        ok = set(a) == set(b) and worst <= atol
        same &= ok
        cells += [f"{len(a)} / {len(b)}", str(len(set(a) ^ set(b))), f"{worst:.1e}"]
    return " | ".join(cells), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write this code's circuits to DIR")
    group.add_argument("--reference", help="compare with circuits saved in DIR")
    parser.add_argument("--n", type=int, default=128, help="prompt pairs (default 128)")
    parser.add_argument("--atol", type=float, default=1e-5, help="largest allowed difference (default 1e-5)")
    args = parser.parse_args()
    model = load_model("toy", progress=False)
    saes = load_saes("toy", model, progress=False)
    if args.save:
        folder = Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        for task, method in CASES:
            (folder / f"{task}-{method}.json").write_text(json.dumps(circuit(model, saes, task, method, args.n)))
        print(f"saved {len(CASES)} circuits to {folder}")
        return
    print(
        "| circuit | nodes ref / now | nodes differing | max |effect diff| | edges ref / now | "
        "edges differing | max |weight diff| | same |"
    )
    print("|---|---|---|---|---|---|---|---|")
    all_same = True
    for task, method in CASES:
        old = json.loads((Path(args.reference) / f"{task}-{method}.json").read_text())
        row, same = compare(old, circuit(model, saes, task, method, args.n), args.atol)
        all_same &= same
        print(f"| {task} {method} | {row} | {'yes' if same else 'NO'} |")
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
